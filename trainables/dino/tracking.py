"""The ``dino`` family's optional tracking (issue 15), after dinopl's ``--track_feathist``,
``--track_gradvar``, ``--save_features``, ``--save_paramstats`` and ``--save_ckpt loss_max``.

Everything here keeps the training step free of host syncs: the step hooks
(:meth:`DinoTracker.after_backward`, :meth:`DinoTracker.after_step`) only launch device work;
the statistics are read back once, in :meth:`DinoTracker.epoch_metrics`, every ``track_every``
epochs and at the last epoch. The metric names and the checkpoint entries are listed in
``docs/search_spaces.md#dino`` (tracking rows).

* ``track_feathist``: summary statistics of the values of the student's and the teacher's encoder
  features and head outputs on a fixed batch (the first ``track_samples`` training images, un-augmented,
  models in eval mode): ``feat_<student|teacher>_<encoder|head>_<mean|std|q05|q50|q95>`` (20 metrics).
  dinopl logs 64-bin wandb histograms per training batch; five numbers per output keep MLflow small.
* ``track_gradvar``: the variance over an epoch's optimiser updates of the student's gradient
  (the raw gradient after backward, before clipping and the last-layer freeze), summed over
  coordinates: ``grad_var`` (all parameters), ``grad_var_encoder``, ``grad_var_head`` =
  Σ_coords 1/(n−1) Σ_steps (g − ḡ)², accumulated with Welford's update on the device.
  dinopl's ``GradVarTracker`` is the variance of per-sample gradients within a batch (a backward
  per sample, every step); this is the step-to-step variance, which costs one parameter-sized
  buffer and no extra backward.
* ``save_paramstats``: per parameter tensor of the student and/or teacher its L2 norm, RMS and L2
  distance from the start of training, appended every tracked epoch to the checkpoint entry
  ``paramstats`` (``{"epochs": [...], "student": {name: {"norm": [...], "rms": [...],
  "dist_init": [...]}}, ...}``), and as metrics the totals ``param_norm_<model>`` and
  ``param_dist_init_<model>``.
* ``save_features``: the student's encoder features on the train / val / test splits (float32, CPU)
  and their labels in the checkpoint entry ``features`` (``{"epoch": e, "train": ..., "train_y":
  ..., "val": ..., ...}``): refreshed at the last epoch (``last``) or at every probe (``probe``).
* ``keep_loss_max``: dinopl's ``--save_ckpt loss_max`` (the checkpoint of the update with the highest
  training loss): after every update whose loss (the step's mean) exceeds the best so far, the
  student's and teacher's parameters are copied on the device (a masked lerp, no sync) into the
  checkpoint entry ``loss_max`` (``{"loss", "step", "student": {name: tensor}, "teacher": ...}``);
  ``loss_max`` and ``loss_max_step`` are reported.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from trainables.dino.params import DinoParams
from trainables.runtime.engine import predict

FEAT_STATS = ("mean", "std", "q05", "q50", "q95")
_QUANTILES = (0.05, 0.5, 0.95)
_MAX_QUANTILE_VALUES = 1 << 20  # torch.quantile refuses huge inputs: a strided sample beyond this


def value_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, std (unbiased), q05, q50, q95] of all values of ``x``, as one float32 device tensor
    (quantiles linearly interpolated, torch.quantile's default; a strided sample of 2^20 values for
    larger tensors)."""
    v = x.detach().float().flatten()
    q_in = v[::-(-len(v) // _MAX_QUANTILE_VALUES)] if len(v) > _MAX_QUANTILE_VALUES else v
    q = torch.quantile(q_in, torch.tensor(_QUANTILES, device=v.device))
    std = v.std() if len(v) > 1 else torch.zeros((), device=v.device)
    return torch.cat([v.mean()[None], std[None], q])


@torch.no_grad()
def feature_stats(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``feat_<model>_<encoder|head>_<stat>`` of each DINO model's encoder features and head outputs on
    ``x``, in eval mode (modes put back), as 0-d device tensors."""
    out = {}
    for name, model in models.items():
        was = model.training
        model.eval()
        feats = model.encoder(x)
        head = model.head(feats)
        model.train(was)
        for part, t in (("encoder", feats), ("head", head)):
            for stat, value in zip(FEAT_STATS, value_stats(t)):
                out[f"feat_{name}_{part}_{stat}"] = value
    return out


class GradVariance:
    """Per-coordinate Welford accumulation of gradients over steps, on the device; the variance
    summed over the coordinates of each parameter group."""

    def __init__(self, groups: dict[str, list[nn.Parameter]]):
        self.groups = {g: [p for p in ps if p.requires_grad] for g, ps in groups.items()}
        self.params = [p for ps in self.groups.values() for p in ps]
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.m2 = torch.zeros(len(self.params), device=self.params[0].device if self.params else "cpu")

    def add(self) -> None:
        """The parameters' current ``.grad`` (None = 0) as one more sample."""
        grads = [torch.zeros_like(m) if p.grad is None else p.grad.detach().float()
                 for p, m in zip(self.params, self.mean)]
        self.n += 1
        delta = torch._foreach_sub(grads, self.mean)
        torch._foreach_add_(self.mean, delta, alpha=1.0 / self.n)
        after = torch._foreach_sub(grads, self.mean)
        self.m2 += torch.stack([(d * a).sum() for d, a in zip(delta, after)])

    def variances(self) -> dict[str, torch.Tensor]:
        """Per group: Σ over its coordinates of the unbiased variance over the samples (0 for < 2)."""
        var = self.m2 / max(self.n - 1, 1) if self.n > 1 else torch.zeros_like(self.m2)
        out, start = {}, 0
        for group, ps in self.groups.items():
            out[group] = var[start:start + len(ps)].sum()
            start += len(ps)
        return out


def param_stats(model: nn.Module, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per parameter: a device tensor [norm, rms, L2 distance from ``init``], stacked (n_params x 3)."""
    rows = []
    for name, p in model.named_parameters():
        v = p.detach().float()
        rows.append(torch.stack([v.norm(), v.square().mean().sqrt(), (v - init[name]).norm()]))
    return torch.stack(rows)


class DinoTracker:
    """What a :class:`~trainables.dino.loop.DinoRun` tracks for ``p``'s tracking keys. ``records``
    are the checkpoint entries it owns (plain dicts, restored in place on resume)."""

    def __init__(self, p: DinoParams, student: nn.Module, teacher: nn.Module, data, epochs: int,
                 probed: Callable[[nn.Module], nn.Module] = lambda encoder: encoder):
        """``student``: unwrapped (no DDP); ``probed``: how the probes feed an encoder (float64)."""
        self.p, self.student, self.teacher, self.data, self.epochs = p, student, teacher, data, epochs
        self.probed = probed
        self.models = {"student": student, "teacher": teacher}
        self.records: dict[str, dict[str, Any]] = {}
        self.gradvar = GradVariance({"encoder": list(student.encoder.parameters()),
                                     "head": list(student.head.parameters())}) if p.track_gradvar else None
        if p.save_paramstats:
            self.init = {m: {n: t.detach().float().clone() for n, t in self.models[m].named_parameters()}
                         for m in p.save_paramstats}
            self.records["paramstats"] = {"epochs": [], **{m: {} for m in p.save_paramstats}}
        if p.save_features != "none":
            self.records["features"] = {}
        if p.keep_loss_max:
            self.records["loss_max"] = {"loss": float("-inf"), "step": -1,
                                        **{m: {n: t.detach().clone() for n, t in model.named_parameters()}
                                           for m, model in self.models.items()}}
            self._best = None  # device copies of loss / step while an epoch runs

    # ------------------------------------------------------------------ step hooks (no host sync)

    def start_epoch(self) -> None:
        if self.gradvar is not None:
            self.gradvar.reset()
        if self.p.keep_loss_max:  # after a resume the entry holds CPU tensors: back on the device
            rec = self.records["loss_max"]
            for m, model in self.models.items():
                for n, t in model.named_parameters():
                    if rec[m][n].device != t.device:
                        rec[m][n] = rec[m][n].to(t.device)
            device = next(self.student.parameters()).device
            self._best = (torch.tensor(float(rec["loss"]), device=device),
                          torch.tensor(int(rec["step"]), device=device))

    def after_backward(self) -> None:
        if self.gradvar is not None:
            self.gradvar.add()

    @torch.no_grad()
    def after_step(self, loss: torch.Tensor, step: int) -> None:
        """``loss``: the update's mean loss (device); ``step``: its 0-based index."""
        if not self.p.keep_loss_max:
            return
        best, best_step = self._best
        better = loss.detach().float() > best
        mask = better.float()
        rec = self.records["loss_max"]
        for m, model in self.models.items():
            names, params = zip(*model.named_parameters())
            torch._foreach_lerp_([rec[m][n] for n in names], [p.detach() for p in params], mask.to(params[0].dtype))
        self._best = (torch.where(better, loss.detach().float(), best),
                      torch.where(better, torch.full_like(best_step, step), best_step))

    # ------------------------------------------------------------------ epoch end (one read-back)

    def tracked(self, epoch: int) -> bool:
        return epoch + 1 == self.epochs or (epoch + 1) % self.p.track_every == 0

    @torch.no_grad()
    def epoch_metrics(self, epoch: int, probed: bool) -> dict[str, float]:
        """The tracking metrics after 0-based ``epoch`` (``probed``: this epoch ran the probes); device
        statistics gathered and read back with one ``tolist``."""
        p = self.p
        device_stats: dict[str, torch.Tensor] = {}
        tracked = self.tracked(epoch)
        if tracked and p.track_feathist:
            x = self.data.train_x[:p.track_samples]
            if p.float64 and x.is_floating_point():
                x = x.double()
            device_stats.update(feature_stats(self.models, x))
        if tracked and self.gradvar is not None:
            var = self.gradvar.variances()
            device_stats["grad_var"] = sum(var.values())
            device_stats.update({f"grad_var_{g}": v for g, v in var.items()})
        pstats = {}
        if tracked and p.save_paramstats:
            for m in p.save_paramstats:
                pstats[m] = param_stats(self.models[m], self.init[m])
                device_stats[f"param_norm_{m}"] = pstats[m][:, 0].square().sum().sqrt()
                device_stats[f"param_dist_init_{m}"] = pstats[m][:, 2].square().sum().sqrt()
        if p.keep_loss_max:
            device_stats["loss_max"], device_stats["loss_max_step"] = self._best
        keys = list(device_stats)
        values = torch.stack([device_stats[k].float().cpu() for k in keys]).tolist() if keys else []
        out = dict(zip(keys, values))
        if p.keep_loss_max:
            rec = self.records["loss_max"]
            rec["loss"], rec["step"] = out["loss_max"], int(out["loss_max_step"])
            out["loss_max_step"] = int(out["loss_max_step"])
        if pstats:
            rec = self.records["paramstats"]
            rec["epochs"].append(epoch + 1)
            for m, table in pstats.items():
                rows = table.cpu().tolist()
                for (name, _), (norm, rms, dist) in zip(self.models[m].named_parameters(), rows):
                    entry = rec[m].setdefault(name, {"norm": [], "rms": [], "dist_init": []})
                    entry["norm"].append(norm)
                    entry["rms"].append(rms)
                    entry["dist_init"].append(dist)
        if p.save_features == "probe" and probed or p.save_features != "none" and epoch + 1 == self.epochs:
            self.save_features(epoch)
        return out

    def save_features(self, epoch: int) -> None:
        encoder = self.probed(self.student.encoder)
        rec = self.records["features"]
        rec.clear()
        rec["epoch"] = epoch + 1
        for split in ("train", "val", "test"):
            rec[split] = predict(encoder, getattr(self.data, f"{split}_x"), features=True).cpu()
            rec[f"{split}_y"] = getattr(self.data, f"{split}_y").cpu()
