"""The supervised / distillation training loop shared by teachers, students and controls.

One code path serves a single process and every rank of a DDP worker group: the data is already
on the device, batches are index tensors, and per-step statistics accumulate on the device and
are synchronised once per epoch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from trainables.data import DatasetSplits
from trainables.losses import DistillLoss, LossInputs
from trainables.runtime.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, evaluate,
                                       head_lr_groups, steps_per_epoch, unwrap)
from trainables.runtime.epochs import Checkpointed, EpochMeans, run_epochs
from trainables.runtime.prefetch import prefetched
from trainables.runtime.session import Session
from trainables.training.batch_augment import BatchAugment
from trainables.training.member_graphs import CaptureError, MemberGraphs
from trainables.training.views import BatchViews, PlainViews


class TeacherSignal(Protocol):
    """Teacher outputs for a batch of training samples: logits, and penultimate features when
    ``features`` is asked for (feature-based losses)."""

    def outputs(self, indices: torch.Tensor, x: torch.Tensor, features: bool = False,
                views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class CachedTeacher:
    """Teacher logits (and features) computed once, looked up by index: (N, classes) for the
    un-augmented training set, or (K, N, classes) for K fixed views, looked up by (view, index)."""

    def __init__(self, train_logits: torch.Tensor, train_features: torch.Tensor | None = None):
        self.train_logits = train_logits
        self.train_features = train_features

    def logits(self, indices, x):
        return self.train_logits[indices]

    def outputs(self, indices, x, features=False, views=None):
        if features and self.train_features is None:
            raise RuntimeError("this loss needs teacher features, but the cached teacher has none")
        if self.train_logits.dim() == 3:
            if views is None:
                raise RuntimeError("cached teacher logits are per view, but the batch has no view indices")
            return self.train_logits[views, indices], None
        return self.train_logits[indices], (self.train_features[indices] if features else None)


class OnlineTeacher:
    """Teacher forward on every batch (needed when inputs are augmented per step). ``train_bn``: its
    batch norms normalise with each batch's statistics and update their running ones (the model in
    train mode, still without gradients), as a teacher never switched to eval mode does."""

    def __init__(self, model: nn.Module, train_bn: bool = False):
        self.model = model.train(train_bn).requires_grad_(False)

    def logits(self, indices, x):
        return self.outputs(indices, x)[0]

    @torch.no_grad()
    def outputs(self, indices, x, features=False, views=None):
        with autocast(x.device):
            if features:
                logits, feats = self.model(x, return_features=True)
                return logits.float(), feats.float()
            return self.model(x).float(), None


class LossModuleSync:
    """Keeps a loss's own learnable parts (projectors, connectors) in step across DDP ranks: rank
    0's parameters and buffers are broadcast once, and gradients are averaged after every backward,
    which is what DDP does for the student. Losses that keep state updated in ``forward`` (CRD's
    memory banks, DINO's centres) synchronise that state themselves. A no-op on one process."""

    def __init__(self, loss_fn: nn.Module, session: Session):
        self.session = session
        self.params = [p for p in loss_fn.parameters() if p.requires_grad]
        self.active = session.distributed
        if self.active:
            import torch.distributed as dist

            for tensor in loss_fn.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self) -> None:
        if not (self.active and self.params):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.session.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
        flat /= self.session.world_size
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compiled_forward(model: Callable, mode: bool | str, device: torch.device,
                     mutated: Iterable[torch.Tensor] = ()) -> tuple[Callable, bool]:
    """The module (or function) a training step calls, and whether it replays CUDA graphs.

    ``mode``: False (eager), True or "default" (torch.compile's default: fused kernels),
    "reduce-overhead" (also CUDA graphs, which remove the per-kernel launch cost that bounds small
    models at small batches; on the CPU there are no graphs and it compiles as "default") or
    "max-autotune-no-cudagraphs". Shapes are static (``dynamic=False``): a trial has one batch
    shape, plus at most one for its last partial batch, each compiled once, so no symbolic-shape
    graphs are traced and every shape keeps its own CUDA graph. Evaluation stays eager (the
    parameters are shared), so other batch sizes there compile nothing. A single trial passes its
    student; a fused trial passes its members' forward and losses as one function
    (trainables/training/fused.py). When CUDA graphs replay, the caller calls
    ``torch.compiler.cudagraph_mark_step_begin()`` before each step.

    ``mutated``: tensors the function updates in place (stacked batch-norm statistics, CRD's
    memory banks), marked as static addresses when CUDA graphs replay: a graph may mutate only
    inputs at fixed addresses."""
    if mode is False:
        return model, False
    name = "default" if mode is True else mode
    if name not in COMPILE_MODES:
        raise ValueError(f"compile: {mode!r} is not a compile mode (accepted: false, true, {', '.join(COMPILE_MODES)})")
    fn = torch.compile(model, mode=None if name == "default" else name, dynamic=False)
    graphs = name == "reduce-overhead" and device.type == "cuda"
    if graphs:
        for tensor in mutated:
            torch._dynamo.mark_static_address(tensor)
    return fn, graphs


@dataclass
class OptimConfig:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    head_lr_mult: float = 1.0  # the head's lr is lr * head_lr_mult (teacher fine-tuning)
    # torch.compile the training forward: False, True (torch's default mode) or a mode name
    # (COMPILE_MODES); "reduce-overhead" replays the forward and backward as CUDA graphs.
    compile: bool | str = False
    nesterov: bool = True  # sgd: Nesterov (true) or plain momentum
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    wd_exclude_1d: bool = True  # no weight decay on biases and 1-D (norm) parameters (timm's filter)
    layer_decay: float | None = None  # layer-wise lr decay (timm models)
    warmup_lr: float = 0.0  # the linear warm-up starts here
    min_lr: float = 0.0  # cosine floor
    decay_epochs: int = 30  # step schedule: decay every this many epochs
    milestones: tuple[int, ...] = ()  # multistep schedule: decay at these epochs
    decay_rate: float = 0.1  # step / multistep factor
    # batch_size is the micro-batch: gradients of accum_steps micro-batches are summed (each loss
    # weighted by its share of the group's samples) before one optimiser step, so one update sees
    # batch_size * accum_steps samples per worker, batch_size * accum_steps * workers in all.
    accum_steps: int = 1
    ema_decay: float | None = None  # model EMA (timm ModelEmaV3) updated after every optimiser step
    # Sel-CL+'s bootstrapped labels (bootstrap_targets): from epoch bootstrap_start (0-based) the
    # label target is (1 - beta) * the labels + beta * the student's own clean-view predictions.
    bootstrap_beta: float = 0.0
    bootstrap_start: int = 0
    # Each full training step (forward, loss, backward, update) captured as a CUDA graph once per
    # epoch and replayed (uses_graphs): "auto" on CUDA wherever nothing blocks a capture, True (an
    # error where something does; eager on a CPU), False.
    cuda_graphs: bool | str = "auto"


def graph_blockers(*, compile: bool | str, accum_steps: int, bootstrap_beta: float,
                   distributed: bool) -> list[tuple[str, str]]:
    """What keeps a trial's step from being captured whole as one CUDA graph: (key, why) pairs
    (the trial's values, so that a trainable's parameters are checked before anything runs)."""
    checks = (
        ("compile", compile is not False,
         f"compile {compile!r} compiles the step itself (reduce-overhead: its own CUDA graphs); set compile: false"),
        ("accum_steps", accum_steps != 1,
         f"a captured step is one whole update, not {accum_steps} micro-batches summed; use 1"),
        ("bootstrap_beta", bootstrap_beta > 0,
         "the bootstrapped labels take another forward of the student in each step; use 0"),
        ("workers", distributed, "DDP workers average their gradients between backward and update; use 1 worker"),
    )
    return [(key, why) for key, bad, why in checks if bad]


def uses_graphs(optim: OptimConfig, device: torch.device, distributed: bool) -> bool:
    """Whether a trial's steps replay as CUDA graphs (``cuda_graphs``). ``auto``: on CUDA, unless
    something blocks a capture (:func:`graph_blockers`). An eager step of a small model is
    launch-bound there: the host takes longer to issue its hundreds of kernels than the GPU to run
    them (resnet8x4, batch 512, H200: 6.8 ms of host time against 4.6 ms of kernels for KD), and
    every extra operation of a loss adds host time (align_uniform ran 1.58x KD's eager step, 1.06x
    as a graph: bench/loss_steps.py --graphs). ``true``: the same on CUDA, a ValueError naming the
    blocking key instead of falling back; on a CPU the step runs eagerly (nothing to capture)."""
    mode = optim.cuda_graphs
    if not (isinstance(mode, bool) or mode == "auto"):
        raise ValueError(f"cuda_graphs: {mode!r}; accepted: auto, true, false")
    if mode is False:
        return False
    blockers = graph_blockers(compile=optim.compile, accum_steps=optim.accum_steps,
                              bootstrap_beta=optim.bootstrap_beta, distributed=distributed)
    if mode is True:
        if blockers:
            key, why = blockers[0]
            raise ValueError(f"cuda_graphs: true cannot take {key}: {why}")
        return True
    return device.type == "cuda" and not blockers


def bootstrap_targets(targets: torch.Tensor, own: torch.Tensor, lam: float, beta: float,
                      num_classes: int) -> torch.Tensor:
    """The bootstrapped soft targets (N, C) of Sel-CL+ (``criterionMixBoot``, Vision Superalignment):
    ``(1 - beta) * mix(onehot(y)) + beta * mix(onehot(z))`` with ``mix(t) = lam * t + (1 - lam) *
    t.flip(0)``. ``targets``: labels (N,), or already mixed soft targets (N, C) (timm's batch
    mixup, which pairs image i with image n-1-i); ``own``: the student's predicted classes z (N,)
    on the un-augmented images; ``lam``: the batch's mixing weight (1.0 unmixed). Cross-entropy is
    linear in its target, so the loss against this equals the authors' four terms
    ``lam(1-B) CE(y_a) + lam B CE(z_a) + (1-lam)(1-B) CE(y_b) + (1-lam) B CE(z_b)``.

    One-hots are scattered, not ``F.one_hot``: that checks the labels' range on the host (a sync)."""
    def onehot(labels: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(labels), num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)

    plain = targets.float() if targets.dim() == 2 else onehot(targets)
    boot = onehot(own)
    if lam != 1.0:
        boot = lam * boot + (1.0 - lam) * boot.flip(0)
    return (1.0 - beta) * plain + beta * boot


def train_classifier(*, model: nn.Module, data: DatasetSplits, loss_fn: DistillLoss, optim: OptimConfig,
                     session: Session, seed: int, teacher: TeacherSignal | None = None,
                     checkpoint_every: int = 0, static_metrics: dict[str, Any] | None = None,
                     views: BatchViews | None = None, batch_augment: BatchAugment | None = None,
                     epoch_hook: Callable[[nn.Module, int], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data`` (already on ``session.device``), reporting every epoch.

    ``views`` picks the student's view of each batch (geometric augmentation); default: the images
    as they are. ``batch_augment`` then applies the per-step ops (policy, erasing, mixup / cutmix)
    to the viewed batch. ``epoch_hook(model, epoch)`` adds metrics of its own after each epoch's
    evaluation (few-shot episodes); it may go on training the model. Returns the last reported metrics. Resumes from ``session.restore()`` when a checkpoint exists.
    """
    run = ClassifierRun(model, data, loss_fn, optim, session, seed, teacher, views or PlainViews(),
                        static_metrics or {}, batch_augment or BatchAugment())
    run.epoch_hook = epoch_hook
    try:
        return run_epochs(session, run.checkpointed(), optim.epochs, run.train_epoch, run.epoch_metrics,
                          checkpoint_every)
    finally:
        if run.step_graphs is not None:  # the graph's memory pool, before whatever trains next here
            run.step_graphs.release([0])


class ClassifierRun:
    """The parts of one :func:`train_classifier` call: the prepared model, loss, optimiser and
    schedule, one training step, one epoch, and the metrics reported after it."""

    def __init__(self, model: nn.Module, data: DatasetSplits, loss_fn: DistillLoss, optim: OptimConfig,
                 session: Session, seed: int, teacher: TeacherSignal | None, views: BatchViews,
                 static_metrics: dict[str, Any], batch_augment: BatchAugment | None = None):
        self.data, self.optim, self.session, self.seed = data, optim, session, seed
        self.batch_augment = batch_augment or BatchAugment()
        # Mixing pairs each image with its mirror in the batch: an odd last batch is dropped.
        self.drop_last = self.batch_augment.mixes
        self.teacher, self.views, self.static_metrics = teacher, views, static_metrics
        self.device = device = session.device
        # channels_last lets cuDNN pick its fastest (NHWC tensor-core) convolutions; on CPU it only costs.
        self.channels_last = device.type == "cuda" and len(data.input_shape) == 3
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = session.prepare_model(model)
        self.step_model, self.cuda_graphs = compiled_forward(self.model, optim.compile, device)
        self.loss_fn = loss_fn.to(device)
        # With compile the loss runs compiled too, a graph of its own (the student's forward is the
        # other): its dozens of small operators are what keeps a feature loss's eager step far above
        # KD's on a launch-bound GPU (bench/loss_steps.py --compile). It gets this epoch's schedule
        # values as tensors (loss_inputs), so a new epoch is no new graph.
        self.step_loss, _ = compiled_forward(self.loss_fn, optim.compile, device, mutated=self.loss_fn.buffers())
        self._columns: tuple[int | None, dict[str, torch.Tensor] | None] = (None, None)
        self.loss_sync = LossModuleSync(self.loss_fn, session)
        params = head_lr_groups(self.model, optim.lr, optim.head_lr_mult, extra=self.loss_fn,
                                weight_decay=optim.weight_decay, wd_exclude_1d=optim.wd_exclude_1d,
                                layer_decay=optim.layer_decay)
        self.optimizer = build_optimizer(optim.optimizer, params, optim.lr, optim.weight_decay, optim.momentum,
                                         device, nesterov=optim.nesterov, betas=optim.betas)
        self.n_train = len(data.train_y)
        micro = steps_per_epoch(self.n_train, optim.batch_size, session.world_size, self.drop_last)
        per_epoch = math.ceil(micro / optim.accum_steps)  # optimiser steps; the schedule counts these
        self.scheduler = build_scheduler(optim.schedule, self.optimizer, per_epoch * optim.epochs,
                                         per_epoch * optim.warmup_epochs, lr=optim.lr, warmup_lr=optim.warmup_lr,
                                         min_lr=optim.min_lr, decay_steps=per_epoch * optim.decay_epochs,
                                         milestones=tuple(per_epoch * m for m in optim.milestones),
                                         decay_rate=optim.decay_rate)
        self.ema = None
        if optim.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(unwrap(self.model), decay=optim.ema_decay)
        # cuda_graphs: the whole step captured and replayed, the way a fused trial's member runs
        # with fused_forward streams (this trial its one member; member_graphs.py says what a
        # capture needs). Built after the scheduler, which records each group's lr as a number.
        self.step_graphs: MemberGraphs | None = None
        if uses_graphs(optim, device, session.distributed):
            for g in self.optimizer.param_groups:
                g["member"] = 0  # every group is the one member's
            self.step_graphs = MemberGraphs([self.model], [self.loss_fn], self.optimizer, device, optim.batch_size,
                                       advice="set cuda_graphs: false")
        self.epoch_hook: Callable[[nn.Module, int], dict[str, Any]] | None = None
        self.progress = {"epoch": 0, "best_val_acc": -1.0, "test_acc_at_best_val": 0.0, "best_epoch": 0}

    def checkpointed(self) -> Checkpointed:
        stateful = {"model": unwrap(self.model), "loss_fn": self.loss_fn, "optimizer": self.optimizer,
                    "scheduler": self.scheduler}
        if self.ema is not None:
            stateful["ema"] = self.ema
        return Checkpointed(stateful, self.progress, optional=("loss_fn", "ema"))

    def train_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        self.model.train()
        self.loss_columns(epoch)  # made here, before the steps: a step copies nothing to the device
        means = EpochMeans()
        self.views.start_epoch(epoch)
        batches = list(epoch_batches(self.n_train, self.optim.batch_size, epoch, self.seed, self.session,
                                     self.device, drop_last=self.drop_last))
        # Per-step augmentation is host work: prepare batches ahead on a side thread and stream (GPU).
        prepared = iter(prefetched(self.prepare, batches, self.device, depth=2 if self.batch_augment.active else 0))
        k = self.optim.accum_steps
        for start in range(0, len(batches), k):
            group = batches[start:start + k]
            for out in self.step(epoch, group, [next(prepared) for _ in group]):
                means.add(out)
        return means.means()

    def step(self, epoch: int, group: list[torch.Tensor], prepared: list[tuple] | None = None) -> list[dict[str, torch.Tensor]]:
        """One optimiser step over the micro-batches in ``group`` (index tensors; ``prepared``: their
        :meth:`prepare` outputs, made here when not given): their gradients are summed, each
        micro-batch's loss weighted by its share of the group's samples (sizes are shapes, known on
        the host: no sync), so a group equals one batch of them all for per-sample mean losses.
        Returns each micro-batch's loss statistics."""
        if self.step_graphs is not None:  # (one micro-batch a step: accum_steps keeps graphs off)
            idx = group[0]
            out = self.graph_step(epoch, idx, prepared[0] if prepared is not None else self.prepare(idx))
            if out is not None:
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(unwrap(self.model))
                return [out]
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(len(idx) for idx in group)
        no_sync = getattr(self.model, "no_sync", None)  # DDP: all-reduce on the last backward only
        outs = []
        for i, idx in enumerate(group):
            last = i == len(group) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                out = self.forward(epoch, idx, prepared[i] if prepared is not None else None)
                loss = out["loss"] if len(group) == 1 else out["loss"] * (len(idx) / total)
                loss.backward()
            outs.append(out)
        self.loss_sync.average_gradients()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        return outs

    def prepare(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """The batch a step consumes: the samples' views, the per-step augmentation (soft targets
        when mixing), the step's memory layout; the view indices (fixed views) or None; and the
        batch's mixing weight lam (1.0 unmixed), which travels with the batch since batches are
        prepared ahead on a side thread."""
        xb, view_ids = self.views.batch(self.data.train_x, idx)
        xb, yb, lam = self.batch_augment.mixed(xb, self.data.train_y[idx])
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb, view_ids, lam

    def forward(self, epoch: int, idx: torch.Tensor, prepared: tuple | None = None) -> dict[str, torch.Tensor]:
        """The loss on one (micro-)batch."""
        xb, yb, view_ids, lam = prepared if prepared is not None else self.prepare(idx)
        with autocast(self.device):
            if self.optim.bootstrap_beta > 0 and epoch >= self.optim.bootstrap_start:
                yb = bootstrap_targets(yb, self.own_predictions(idx), lam, self.optim.bootstrap_beta,
                                       self.data.num_classes)
            return self.step_loss(self.loss_inputs(epoch, idx, xb, yb, view_ids))

    def graph_step(self, epoch: int, idx: torch.Tensor, prepared: tuple) -> dict[str, torch.Tensor] | None:
        """The step through :class:`MemberGraphs`: the teacher's outputs looked up (or computed)
        eagerly here, the student's forward, the loss, backward and the update replayed (eager
        before the first capture and for an epoch's partial last batch). Its loss statistics, or
        None when a capture failed under ``cuda_graphs: auto``: the trial then goes on eagerly
        from this step, with a warning."""
        xb, yb, view_ids, _ = prepared
        t_logits, t_feats = self.teacher_outputs(idx, xb, view_ids)
        epochs = self.optim.epochs
        shared = LossInputs(student_logits=None, targets=yb, teacher_logits=t_logits, teacher_features=t_feats,
                            indices=idx, epoch=epoch, num_epochs=epochs, progress=epoch / epochs)
        try:
            out = self.step_graphs.step(epoch, xb, shared, [0])[0]
        except CaptureError as exc:
            if self.optim.cuda_graphs is True:
                raise
            import warnings

            warnings.warn(f"cuda_graphs auto: training eagerly from epoch {epoch + 1} on: {exc}", stacklevel=2)
            self.step_graphs.release([0])
            self.step_graphs = None
            for g in self.optimizer.param_groups:
                g["lr"] = float(g["lr"])  # the eager optimiser takes the lr as a number again
            return None
        self.optimizer._opt_called = True  # stepped through the member's view: the scheduler's order check
        return out

    def teacher_outputs(self, idx: torch.Tensor, xb: torch.Tensor,
                        view_ids: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's logits (and features, for a loss that reads them) for the batch, or Nones."""
        if self.teacher is None or not self.loss_fn.needs_teacher:
            return None, None
        return self.teacher.outputs(idx, xb, features=self.loss_fn.needs_features, views=view_ids)

    @torch.no_grad()
    def own_predictions(self, idx: torch.Tensor) -> torch.Tensor:
        """The student's classes for the un-augmented images of the batch, from a forward in train
        mode as the authors run it (batch-norm uses and updates the batch statistics). Eager: a
        no-grad call of the compiled forward would be another graph, and with CUDA graphs its
        outputs would live in the pool the step's graph overwrites."""
        x = self.data.train_x[idx]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).argmax(1)

    def loss_inputs(self, epoch: int, idx: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                    view_ids: torch.Tensor | None) -> LossInputs:
        """The student's forward on the batch and the teacher's outputs for it (under autocast)."""
        loss_fn = self.loss_fn
        if self.cuda_graphs:
            # A new step begins: the graphs' previous outputs may be overwritten. Every consumer of
            # the last step's outputs (loss, backward, statistics) has run by now.
            torch.compiler.cudagraph_mark_step_begin()
        if loss_fn.needs_features:
            s_logits, s_feats = self.step_model(xb, return_features=True)
        else:
            s_logits, s_feats = self.step_model(xb), None
        t_logits, t_feats = self.teacher_outputs(idx, xb, view_ids)
        epochs = self.optim.epochs
        return LossInputs(student_logits=s_logits.float(), targets=yb, teacher_logits=t_logits,
                          student_features=s_feats, teacher_features=t_feats, indices=idx,
                          epoch=epoch, num_epochs=epochs, progress=epoch / epochs,
                          member_columns=self.loss_columns(epoch))

    def loss_columns(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """The compiled loss's schedule values for ``epoch`` as tensors (``epoch_columns`` of one),
        made once per epoch outside the graph; None for an eager loss, which reads the epoch."""
        if self.step_loss is self.loss_fn:
            return None
        if self._columns[0] != epoch:
            self._columns = (epoch, type(self.loss_fn).epoch_columns([self.loss_fn], epoch, self.optim.epochs,
                                                                     self.device))
        return self._columns[1]

    def epoch_metrics(self, epoch: int, train_stats: dict[str, float]) -> dict[str, Any]:
        data, progress = self.data, self.progress
        val = evaluate(self.model, data.val_x, data.val_y, self.session)
        test = evaluate(self.model, data.test_x, data.test_y, self.session)
        if val["acc"] > progress["best_val_acc"]:
            progress.update(best_val_acc=val["acc"], test_acc_at_best_val=test["acc"], best_epoch=epoch + 1)
        extra = {f"{split}_top5": r["top5"] for split, r in (("val", val), ("test", test)) if "top5" in r}
        if self.ema is not None:
            extra["ema_val_acc"] = evaluate(self.ema.module, data.val_x, data.val_y, self.session)["acc"]
            extra["ema_test_acc"] = evaluate(self.ema.module, data.test_x, data.test_y, self.session)["acc"]
        if self.epoch_hook is not None:
            extra.update(self.epoch_hook(unwrap(self.model), epoch))
        return {
            "epoch": epoch + 1, **train_stats, **extra,
            "val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"], "test_loss": test["loss"],
            "best_val_acc": progress["best_val_acc"], "test_acc_at_best_val": progress["test_acc_at_best_val"],
            "lr": float(self.optimizer.param_groups[0]["lr"]),  # a device tensor with cuda_graphs
            **self.static_metrics,
        }
