"""Sel-CL's first stage (the authors' ``train_Sel-CL.py`` with ``train_uns`` / ``train_sel`` and
``pair_selection``), on a batch of device tensors.

Each epoch visits the training set in shuffled batches of ``b`` (the last one smaller). A step:

1. Two views ``x1``, ``x2`` of the batch (``complex`` or ``simple`` augmentation, drawn per image
   on the device). **Unsupervised term**: InfoNCE of the student's ``x1`` embedding against the
   momentum encoder's ``x2`` embedding, with the negatives queue; the keys join the queue.
2. Each view is mixed with a shuffled copy of itself (``lam`` ~ Beta(a, a), kept >= 0.5); the
   encoder and the momentum encoder embed and classify both; the momentum encoder's outputs join
   the pair memory.
3. After the first ``uns_epochs`` (which train the unsupervised term alone): the **supervised
   contrastive** and **similarity** terms over the batch's selected pairs, and from epoch
   ``sup_queue_begin + 1`` also over the pair memory; the unsupervised term then counts only for
   images with fewer selected positives than one (two with the memory); and a **classification**
   term: mixed cross-entropy on two views of ``b`` examples drawn (with replacement) from the
   selected ones.
4. SGD on ``sel + lambda_c * classification`` plus the similarity term's gradient (times
   ``lambda_s``), clipped to norm ``simi_clip`` on its own as the authors do; the lr warms up
   per update from ``lr / warmup_multiplier`` and decays at the milestones; the momentum encoder's
   parameters follow by EMA (its batch norms keep their own running statistics, in train mode).

After every epoch from ``uns_epochs`` on, the selection (:mod:`trainables.selcl.selection`) runs on
the embeddings of the un-augmented training images (eval mode), and its pairs serve the next epoch.

Differences from the authors': bf16 autocast instead of apex O1; the kNN monitor they print each
epoch is left out (the classifier's val / test accuracy and the selection's size and, where the
clean labels are known, precision are reported instead)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import DatasetSplits
from trainables.models import Classifier
from trainables.core.stage_work import stage_dir
from trainables.runtime.engine import autocast, evaluate
from trainables.runtime.epochs import Checkpointed, run_epochs
from trainables.runtime.rng import GeneratorState, RngState
from trainables.runtime.session import LocalSession
from trainables.runtime.stages import StageSession
from trainables.selcl.config import SelCLConfig
from trainables.selcl.losses import mixed_cross_entropy, moco_nce, similarity_bce, sup_contrastive
from trainables.selcl.memory import NegativesQueue, PairMemory
from trainables.selcl.selection import PairRule, Selection, pair_threshold, select_examples
from trainables.selcl.views import TwoViewAugment


class SelCLNet(nn.Module):
    """The classifier plus Sel-CL's linear projection to the L2-normalised contrastive embedding
    (their ``head``; the classifier's head is their ``linear2``)."""

    def __init__(self, backbone: Classifier, low_dim: int):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.num_features, low_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.backbone(x, return_features=True)
        return logits, F.normalize(self.proj(feats), dim=1)


def mixer(alpha: float) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]]:
    """Their ``mix_data_lab``: ``lam x + (1 - lam) x[perm]`` with lam = max(l, 1 - l), l ~ Beta(alpha,
    alpha) drawn on the host (numpy: no device sync), one perm per call."""

    def apply(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
        lam = max(lam, 1.0 - lam)
        perm = torch.randperm(x.shape[0], device=x.device)
        return lam * x + (1 - lam) * x[perm], perm, lam
    return apply


def view_masks(b: int, perm_a: torch.Tensor, perm_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The label-free masks over the 2b rows: (other view of the image, the mixing partner, all
    but itself)."""
    eye = torch.eye(b, device=perm_a.device)
    uns = eye.repeat(2, 2).fill_diagonal_(0)
    uns2 = torch.cat([eye[perm_a].repeat(1, 2), eye[perm_b].repeat(1, 2)]).fill_diagonal_(0)
    return uns, uns2, 1 - torch.eye(2 * b, device=perm_a.device)


def pair_masks(pairs: torch.Tensor, perm_a: torch.Tensor, perm_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The supervised masks over the 2b rows from the batch's (b, b) pair mask: the image's own
    pairs (no self, no other view) and its mixing partner's (self-pairs zeroed only on the diagonal)."""
    sup = pairs.clone().fill_diagonal_(0).repeat(2, 2).fill_diagonal_(0)
    sup2 = torch.cat([pairs[perm_a].repeat(1, 2), pairs[perm_b].repeat(1, 2)]).fill_diagonal_(0)
    return sup, sup2


def memory_masks(mem_pairs: torch.Tensor, perm_a: torch.Tensor, perm_b: torch.Tensor, block: slice,
                 batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The masks over the memory's columns from the (b, Q) pair mask of the batch against the memory;
    the columns of the batch's own entries (``block``) take the batch masks ``batch`` = (sup, sup2,
    uns, uns2, logits_mask)."""
    sup = mem_pairs.repeat(2, 1)
    sup2 = torch.cat([mem_pairs[perm_a], mem_pairs[perm_b]])
    uns, uns2, logits_mask = torch.zeros_like(sup), torch.zeros_like(sup), torch.ones_like(sup)
    out = (sup, sup2, uns, uns2, logits_mask)
    for mask, inner in zip(out, batch):
        mask[:, block] = inner
    return out


def lr_factor(step: int, steps_per_epoch: int, cfg: SelCLConfig) -> float:
    """Their GradualWarmupScheduler around MultiStepLR, stepped per update."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm and step <= warm:
        return (1 + (cfg.warmup_multiplier - 1) * step / warm) / cfg.warmup_multiplier
    return cfg.decay_rate ** sum(step >= m * steps_per_epoch for m in cfg.milestones)


@dataclass
class SelCLResult:
    backbone: Classifier
    selection: Selection
    threshold: float
    history: list[dict[str, Any]] = field(default_factory=list)


class SelCLRun:
    def __init__(self, backbone: Classifier, data: DatasetSplits, cfg: SelCLConfig):
        self.cfg, self.data = cfg, data
        self.device = device = data.train_x.device
        self.net = SelCLNet(backbone, cfg.low_dim).to(device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.ema = self.ema.to(memory_format=torch.channels_last)
        self.params = list(self.net.parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.n = len(data.train_y)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: lr_factor(t, self.steps_per_epoch, cfg))
        problem = cfg.memory_problem(data.num_classes)
        if problem:
            raise ValueError(f"selcl.queue_per_class: {problem}")
        self.negatives = NegativesQueue(cfg.low_dim, cfg.uns_queue, device)
        self.memory = PairMemory(cfg.queue_per_class * data.num_classes * 2, cfg.low_dim, data.num_classes, device)
        self.views = TwoViewAugment(cfg.augment, data.mean, data.std, data.input_shape, cfg.seed, device)
        self.mix = mixer(cfg.mixup_alpha)
        self.rule: PairRule | None = None

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        x = self.views(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """One update on the batch ``idx`` (see the module docstring). The networks run under bf16
        autocast; the similarities, the losses and the pair rule in float32 (apex O1, the authors'
        mixed precision, keeps them at least in fp16, whose 11 bits separate the pair threshold's
        neighbourhood of 1 eight times finer than bf16's)."""
        cfg, b = self.cfg, idx.shape[0]
        x = self.data.train_x[idx]
        x1, x2 = self._view(x), self._view(x)
        selective = epoch > cfg.uns_epochs
        with autocast(self.device):
            _, q = self.net(x1)
            with torch.no_grad():
                _, k = self.ema(x2)
            (xa, perm_a, lam_a), (xb, perm_b, lam_b) = self.mix(x1), self.mix(x2)
            if selective:  # the uns warm-up needs only the momentum encoder's outputs of the mixed views
                logits_a, emb_a = self.net(xa)
                logits_b, emb_b = self.net(xb)
            with torch.no_grad():
                ema_la, ema_ea = self.ema(xa)
                ema_lb, ema_eb = self.ema(xb)
            if selective:
                # Classification on examples drawn from the selected ones (a weighted draw: no sync).
                cidx = torch.multinomial(self.rule.selected.float(), b, replacement=True)
                cx, cy = self.data.train_x[cidx], self.data.train_y[cidx]
                classified = []
                for view in (self._view(cx), self._view(cx)):
                    mixed, perm, lam = self.mix(view)
                    classified.append((self.net(mixed)[0], perm, lam))
        with torch.autocast(self.device.type, enabled=False):
            # A copy: the push overwrites the keys the backward needs (the authors clone too).
            negatives = self.negatives.keys.clone()
            self.negatives.push(k.float())
            uns = moco_nce(q.float(), k.float(), negatives, cfg.uns_t)
            self.memory.push(torch.cat([ema_ea, ema_eb]).float(), torch.cat([ema_la, ema_lb]).float().softmax(1),
                             torch.cat([idx, idx]))
            if not selective:
                loss = uns.mean()
                loss.backward()
                return self._update(loss.detach())
            emb = torch.cat([emb_a, emb_b]).float()
            probs = torch.cat([logits_a, logits_b]).float().softmax(1)
            uns_m, uns2_m, logits_mask = view_masks(b, perm_a, perm_b)
            sup_m, sup2_m = pair_masks(self.rule(idx, idx), perm_a, perm_b)
            batch = (sup_m, sup2_m, uns_m, uns2_m, logits_mask)
            sup = sup_contrastive(emb @ emb.T, *batch, lam_a, lam_b, cfg.sup_t)
            simi = similarity_bce(probs @ probs.T, *batch, lam_a, lam_b)
            positives = sup_m[:b].sum(1)
            if epoch > cfg.sup_queue_begin:
                feats, mem_probs, mem_index = self.memory.get()
                mem = memory_masks(self.rule(idx, mem_index), perm_a, perm_b, self.memory.last_push(2 * b), batch)
                sup = sup + sup_contrastive(emb @ feats.T, *mem, lam_a, lam_b, cfg.sup_t)
                simi = simi + similarity_bce(probs @ mem_probs.T, *mem, lam_a, lam_b)
                few = positives + mem[0][:b].sum(1) < 2
            else:
                few = positives < 1
            classif = sum(mixed_cross_entropy(logits.float(), cy, cy[perm], torch.full_like(cy, lam, dtype=torch.float32))
                          for logits, perm, lam in classified) / len(classified)
            loss = (few * uns).mean() + sup + cfg.lambda_c * classif
        if cfg.lambda_s > 0:
            simi_grads = torch.autograd.grad(cfg.lambda_s * simi, self.params, retain_graph=True, allow_unused=True)
        loss.backward()
        if cfg.lambda_s > 0:
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(simi_grads, self.params)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = (cfg.simi_clip / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule, no sync
            for p, g in zip(self.params, grads):
                if p.grad is None:
                    p.grad = g * scale
                else:
                    p.grad.add_(g * scale)
        return self._update(loss.detach() + cfg.lambda_s * simi.detach())

    def _update(self, loss: torch.Tensor) -> torch.Tensor:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        m = self.cfg.ema
        with torch.no_grad():
            ema_params = list(self.ema.parameters())
            torch._foreach_mul_(ema_params, m)
            torch._foreach_add_(ema_params, [p.detach() for p in self.params], alpha=1 - m)
        return loss

    @torch.no_grad()
    def embeddings(self, chunk: int = 1024) -> torch.Tensor:
        self.net.eval()
        out = []
        for start in range(0, self.n, chunk):
            x = self.data.train_x[start:start + chunk]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device):
                out.append(self.net(x)[1].float())
        self.net.train()
        return F.normalize(torch.cat(out), dim=1)

    def select(self) -> tuple[Selection, float]:
        cfg, y = self.cfg, self.data.train_y
        feats = self.embeddings()
        sel = select_examples(feats, y, self.data.num_classes, cfg.k_val, cfg.example_quantile)
        threshold = pair_threshold(feats, y, sel.selected, self.data.num_classes, cfg.pair_quantile)
        self.rule = PairRule(feats, y, sel.selected, threshold)
        return sel, threshold

    def batches(self, epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=gen).to(self.device)
        return list(perm.split(self.cfg.batch_size))


def train_selcl(backbone: Classifier, data: DatasetSplits, cfg: SelCLConfig, clean_train_y: torch.Tensor | None = None,
                session: LocalSession | None = None) -> SelCLResult:
    """Run the stage on ``data`` (on its device; ``train_y`` the noisy labels). ``backbone`` comes
    initialised (the caller seeds); the projection, mixing and augmentation draw from the global
    generators from there. ``clean_train_y``: the true labels, for the selection's precision and
    recall in the history only. ``session`` receives each epoch's metrics; one with a checkpoint
    folder (:class:`~trainables.runtime.stages.StageSession`) resumes the stage from it, the
    generators included, and the resumed stage ends as an uninterrupted one would."""
    run = SelCLRun(backbone, data, cfg)
    session = session or LocalSession(run.device)
    clean = None if clean_train_y is None else data.train_y == clean_train_y.to(run.device)
    chosen: dict[str, Any] = {}  # the latest selection and its pair threshold

    def train_epoch(epoch: int) -> dict[str, torch.Tensor]:
        if run.rule is None and epoch >= cfg.uns_epochs:  # resumed: redo the selection made after the restored epoch
            chosen["selection"], chosen["threshold"] = run.select()
        run.net.train()
        run.ema.train()
        total = torch.zeros((), device=run.device)
        for idx in run.batches(epoch + 1):
            total += run.step(idx, epoch + 1)
        return {"train_loss": total / run.steps_per_epoch}

    def epoch_metrics(epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": stats["train_loss"],
                                   "lr": run.optimizer.param_groups[0]["lr"]}
        if epoch + 1 >= cfg.uns_epochs:
            selection, threshold = chosen["selection"], chosen["threshold"] = run.select()
            metrics.update(selected=int(selection.selected.sum()), per_class=selection.per_class,
                           pair_threshold=threshold)
            if clean is not None:
                right = int((selection.selected & clean).sum())
                metrics.update(selected_precision=right / max(metrics["selected"], 1),
                               clean_recall=right / max(int(clean.sum()), 1))
        for split in ("val", "test"):
            metrics[f"{split}_acc"] = evaluate(run.net.backbone, *data.split(split), session)["acc"]
        return metrics

    stateful = {"net": run.net, "ema": run.ema, "optimizer": run.optimizer, "scheduler": run.scheduler,
                "negatives": run.negatives, "memory": run.memory, "views": GeneratorState(run.views.generator),
                "rng": RngState(numpy=True)}  # mixing draws from numpy's and torch's global generators
    progress = {"epoch": 0}
    run_epochs(session, Checkpointed(stateful, progress), cfg.epochs, train_epoch, epoch_metrics, checkpoint_every=1)
    if "selection" not in chosen and progress["epoch"] >= cfg.uns_epochs:
        # resumed after the last epoch: the pair rule and selection follow from the restored network
        chosen["selection"], chosen["threshold"] = run.select()
    return SelCLResult(run.net.backbone, chosen.get("selection"), chosen.get("threshold"), list(session.history))


def run_stage(model: Classifier, data: DatasetSplits, cfg: SelCLConfig, out_dir: str,
              clean_train_y: torch.Tensor | None = None, label: str = "Sel-CL stage") -> dict[str, Any]:
    """:func:`train_selcl`, then its products in ``out_dir`` (an artifact-cache entry being built):
    ``model.pt`` (the classifier's state dict: backbone and head, the projection left out, as the
    fine-tuning stage loads it), ``selected.pt`` (bool, per training example) and ``selcl.json``
    (the last epoch's metrics and the per-epoch history). Returns the last epoch's metrics. Within
    an artifact-cache build the stage checkpoints into the entry's work folder and prints progress
    lines headed ``label``."""
    import json
    import os

    session = StageSession(label, cfg.epochs, data.train_x.device, stage_dir("selcl"),
                           keys=("train_loss", "selected", "selected_precision", "val_acc"))
    result = train_selcl(model, data, cfg, clean_train_y=clean_train_y, session=session)
    torch.save({k: v.cpu() for k, v in result.backbone.state_dict().items()}, os.path.join(out_dir, "model.pt"))
    torch.save(result.selection.selected.cpu(), os.path.join(out_dir, "selected.pt"))
    last = result.history[-1]
    with open(os.path.join(out_dir, "selcl.json"), "w") as f:
        json.dump({"final": last, "history": result.history}, f, indent=1)
    return last
