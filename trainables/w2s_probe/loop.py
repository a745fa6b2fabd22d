"""The ``w2s_probe`` trial: the W2S and ceiling probes of every configuration, trained together on
the cached embeddings, and their metrics each epoch.

With ``vectorize: K`` one trial trains K sampled probe configurations (times any grid over probe
parameters) as one batched computation (:mod:`trainables.training.linear_probe`), and reports each
configuration's metrics under ``probes``; the orchestrator turns them into one row and one MLflow
run each. The trial-level metrics Tune's scheduler sees are the best over the configurations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trainables.losses import validate_loss_params
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext
from trainables.runtime.vectorize import RESULTS_KEY, best_over
from trainables.training.linear_probe import ProbeSpec, train_probes
from trainables.w2s_probe.features import W2SInputs, load_inputs
from trainables.w2s_probe.params import ProbeConfig, W2SProbeParams


@dataclass(frozen=True)
class ProbePlan:
    w2s: ProbeSpec
    strong: ProbeSpec


def probe_plan(cfg: ProbeConfig) -> ProbePlan:
    """The two probes of one configuration. The ceiling is plain cross-entropy on the ground truth
    with the same optimisation, so configurations differing only in W2S options share it. Each
    role has its own init stream, the same in every configuration (common random numbers)."""
    loss = validate_loss_params(cfg.w2s_loss, cfg.loss_params)
    w2s = ProbeSpec(target=f"weak_{cfg.w2s_labels}", lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                    aux_coef=getattr(loss, "aux_coef", 0.0), warmup_frac=getattr(loss, "warmup_frac", 0.1),
                    label_smoothing=getattr(loss, "label_smoothing", 0.0), init=0)
    strong = ProbeSpec(target="truth", lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, init=1)
    return ProbePlan(w2s, strong)


def pgr(w2s_acc: float, weak_acc: float, strong_acc: float) -> float:
    """Performance gap recovered; NaN when the ceiling does not beat the weak teacher."""
    gap = strong_acc - weak_acc
    return (w2s_acc - weak_acc) / gap if gap > 0 else math.nan


class ProbeScorer:
    """Per-configuration metrics from each epoch's predictions, with few host syncs."""

    def __init__(self, inputs: W2SInputs, plans: list[ProbePlan], index: dict[ProbeSpec, int], static: dict):
        self.plans, self.index, self.static = plans, index, static
        weak_pred = inputs.weak_logits.argmax(-1)
        self.evals = {"": inputs.rows("test")}
        if len(inputs.splits.val):
            self.evals["val_"] = inputs.rows("val")
        self.x = {prefix: inputs.features[rows] for prefix, rows in self.evals.items()}
        self.y = {prefix: inputs.labels[rows] for prefix, rows in self.evals.items()}
        self.weak_y = {prefix: weak_pred[rows] for prefix, rows in self.evals.items()}
        self.weak_acc = {prefix: float((self.weak_y[prefix] == self.y[prefix]).float().mean())
                         for prefix in self.evals}
        self.latest: list[dict[str, float]] = [{} for _ in plans]

    def update(self, view) -> None:
        held = {spec_id: j for j, spec_id in enumerate(view.probe_ids)}
        scores: dict[str, list[float]] = {}
        for prefix in self.evals:
            preds = view.predict(self.x[prefix])
            scores[prefix + "acc"] = (preds == self.y[prefix]).float().mean(1).tolist()
            scores[prefix + "agree"] = (preds == self.weak_y[prefix]).float().mean(1).tolist()
        losses = view.train_loss.tolist()
        for k, plan in enumerate(self.plans):
            if plan.w2s.epochs < view.epoch:
                continue  # finished in an earlier epoch; its last metrics stand
            jw, js = held[self.index[plan.w2s]], held[self.index[plan.strong]]
            m: dict[str, float] = {"epoch": view.epoch, "w2s_train_loss": losses[jw], "strong_train_loss": losses[js]}
            for prefix, weak in self.weak_acc.items():
                w2s, strong = scores[prefix + "acc"][jw], scores[prefix + "acc"][js]
                m.update({f"{prefix}weak_acc": weak, f"{prefix}w2s_acc": w2s, f"{prefix}strong_acc": strong,
                          f"{prefix}pgr": pgr(w2s, weak, strong), f"{prefix}gap": strong - weak,
                          f"{prefix}agreement": scores[prefix + "agree"][jw]})
            self.latest[k] = m

    def report(self, epoch: int, vectorized: bool) -> dict[str, Any]:
        per_config = [{**self.static, **m} for m in self.latest]
        if not vectorized:
            return per_config[0]
        names = sorted({k for m in per_config for k in m if k != "epoch"})
        best = {k: best_over([m.get(k, math.nan) for m in per_config], k) for k in names}
        return {**best, "epoch": epoch, RESULTS_KEY: per_config}


# The metrics a trial reports at every epoch with the same value (declared on the trainable, so
# MLflow logs them once per trial).
STATIC_METRICS = ("weak_acc_all", "n_train", "n_val", "n_test", "feature_passes", "model_trainings",
                  "feature_cache_hits", "probe_configs", "probes_trained")


def run_w2s_probe(p: W2SProbeParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    device = session.device
    inputs = load_inputs(p, ctx.artifacts, device)
    configs = p.probe_configs()
    plans = [probe_plan(c) for c in configs]
    specs = list(dict.fromkeys(s for plan in plans for s in (plan.w2s, plan.strong)))  # each distinct probe once
    index = {s: i for i, s in enumerate(specs)}
    train_rows = inputs.rows("train")
    weak_probs = torch.softmax(inputs.weak_logits[train_rows].float(), dim=-1)
    targets = {"weak_soft": weak_probs, "weak_hard": weak_probs.argmax(-1), "truth": inputs.labels[train_rows]}
    info = inputs.info
    static = {"weak_acc_all": info.get("weak_acc_all") or math.nan, "n_train": float(len(train_rows)),
              "n_val": float(len(inputs.splits.val)), "n_test": float(len(inputs.splits.test)),
              "feature_passes": float(info["feature_passes"]), "model_trainings": float(info["model_trainings"]),
              "feature_cache_hits": float(info["weak_cache_hit"]) + float(info["strong_cache_hit"]),
              "probe_configs": float(len(configs)), "probes_trained": float(len(specs))}
    scorer = ProbeScorer(inputs, plans, index, static)
    last: dict[str, Any] = {}

    def on_epoch(view) -> None:
        nonlocal last
        scorer.update(view)
        last = scorer.report(view.epoch, p.is_vectorized)
        session.report(last)

    train_probes(inputs.features[train_rows], targets, specs, num_classes=inputs.num_classes,
                 batch_size=p.batch_size, seed=p.seed, on_epoch=on_epoch, device=device)
    return last
