"""``w2s_probe``: weak-to-strong generalisation with linear probes on cached embeddings
(openai/weak-to-strong ``vision/``, spec sections 0 and 1 of the methods reference).

A weak teacher labels the probe pool; a linear probe on a frozen strong backbone's embeddings is
trained (a) on the weak labels, giving the W2S accuracy, and (b) on the ground truth, giving the
strong ceiling, with identical hyperparameters. Both are scored on the same test split as the
weak teacher, and

    PGR = (w2s_acc - weak_acc) / (strong_acc - weak_acc)          (NaN when strong_acc <= weak_acc)

The seed protocol is the default: soft-label cross-entropy against the teacher's softmax, Adam
(lr 1e-3, no weight decay), batch 100, per-step cosine to 0, 10 epochs, last-epoch numbers.
Options: hard weak labels (``w2s_labels: hard``) and the auxiliary-confidence loss
(``w2s_loss: auxconf``). Weak logits and embeddings come from the feature store (computed once per
recipe, see :mod:`trainables.w2s_probe.features`); a trial never runs a model forward pass on a cache hit.

With ``vectorize: K`` one trial trains K sampled probe configurations (times any grid over probe
parameters) as one batched computation (:mod:`trainables.training.linear_probe`), and reports each
configuration's metrics under ``probes``; the orchestrator turns them into one row and one MLflow
run each. The trial-level metrics Tune's scheduler sees are the best over the configurations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from trainables.core.config import StrictModel, first_problem
from trainables.core.registry import kwargs_validator
from trainables.data import DATASETS, AnyDatasetName
from trainables.data.streamed import is_folder_dataset
from trainables.training.linear_probe import ProbeSpec, train_probes
from trainables.losses import check_loss_params, validate_loss_params
from trainables.runtime.trainable import TrialContext, TrialParams, register_trainable
from trainables.runtime.vocabulary import Vocabulary
from trainables.runtime.session import Session, default_device
from trainables.runtime.vectorize import RESULTS_KEY, expand_configs, is_vectorized
from trainables.w2s_probe.report import PLOTS as W2S_PLOTS, W2S_COLUMNS, pgr_summary
from trainables.w2s_probe.features import (ModelSource, ModelTraining, PretrainSplit, W2SInputs, load_inputs,
                                     prepare_inputs)

PROBE_FIELDS = ("lr", "weight_decay", "epochs", "w2s_labels", "w2s_loss", "loss_params")


class ProbeConfig(StrictModel):
    """The parameters of one probe configuration: what a vectorised trial varies."""

    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate (cosine to 0 per step)")
    weight_decay: float = Field(0.0, ge=0, description="Adam (L2) weight decay")
    epochs: int = Field(10, ge=1, le=10_000)
    w2s_labels: Literal["soft", "hard"] = Field("soft", description="weak labels as probabilities or argmax")
    w2s_loss: Literal["ce", "auxconf"] = Field("ce", description="the W2S probe's loss; the ceiling uses ce")
    loss_params: dict[str, Any] = Field(default_factory=dict, description="the W2S loss's parameters")

    @model_validator(mode="after")
    def _loss_params_fit_loss(self):
        check_loss_params(self.w2s_loss, self.loss_params)
        return self


def _default_weak() -> ModelSource:
    return ModelSource(model="linear", train=ModelTraining(epochs=20, lr=0.05))


def _default_strong() -> ModelSource:
    return ModelSource(model="cnn", train=ModelTraining(epochs=30, lr=0.05))


class W2SProbeParams(TrialParams, ProbeConfig):
    dataset: AnyDatasetName = Field("digits", description="a registered dataset, in memory or streamed (imagenet)")
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict)
    split_seed: int = Field(0, ge=0, description="seed of the role split and of the probe train/test permutation")
    pretrain_split: PretrainSplit = Field(default_factory=lambda: PretrainSplit(weak=0.15, strong=0.35))
    weak: ModelSource = Field(default_factory=_default_weak)
    strong: ModelSource = Field(default_factory=_default_strong)
    n_train: float = Field(0.8, gt=0, description="probe training samples: a fraction (< 1) of the pool or a count")
    n_val: float = Field(0.0, ge=0, description="held out from the end of the training samples for validation")
    batch_size: int = Field(100, ge=1)
    feature_batch_size: int = Field(256, ge=1, description="batch of the weak / strong passes (not in cache keys)")
    feature_workers: int = Field(0, ge=0, description="DataLoader workers of passes over folder datasets")
    vectorize: int | None = Field(None, ge=1, le=4096, description="probe configurations sampled per trial")
    probes: list[dict[str, Any]] | None = None
    probe_grid: dict[str, list[Any]] | None = None

    _dataset_kwargs_fit = kwargs_validator("dataset", "dataset_kwargs", DATASETS.check_kwargs)

    @model_validator(mode="after")
    def _consistent(self):
        if self.workers != 1:
            raise ValueError("workers: probes train as one batched computation on one device; use workers: 1")
        if is_folder_dataset(self.dataset) and "data_root" not in self.dataset_kwargs:
            raise ValueError(f"dataset_kwargs.data_root: is required for the {self.dataset} folder dataset")
        for role in ("weak", "strong"):
            has_slice = getattr(self.pretrain_split, role) > 0
            if (getattr(self, role).train is not None) != has_slice:
                raise ValueError(f"pretrain_split.{role}: {role}.train and a nonzero pretrain_split.{role} go "
                                 "together (a model trained here needs its own slice, and a slice needs a model)")
        for i, cfg in enumerate(expand_configs(self.model_dump(), PROBE_FIELDS) if self.is_vectorized else []):
            try:
                ProbeConfig.model_validate(cfg)
            except ValidationError as exc:
                raise ValueError(f"probe configuration {i}: {first_problem(exc)}") from None
        return self

    @property
    def is_vectorized(self) -> bool:
        return is_vectorized(self.model_dump())

    def probe_configs(self) -> list[ProbeConfig]:
        return [ProbeConfig.model_validate(c) for c in expand_configs(self.model_dump(), PROBE_FIELDS)]


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


def best_over(values: list[float], name: str) -> float:
    """The best of one metric over a trial's configurations: min for losses, else max; NaN-aware."""
    finite = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not finite:
        return math.nan
    return min(finite) if "loss" in name else max(finite)


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


def prepare_w2s(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    """Compute the weak logits and strong embeddings once, before any trial, unless their recipe
    is searched (then each trial makes the entry it needs, one builder per recipe)."""
    roots = {k.split(".")[0] for k in searched}
    if roots & {"dataset", "dataset_kwargs", "split_seed", "pretrain_split"}:
        return None
    roles = tuple(role for role in ("weak", "strong") if role not in roots)
    if not roles:
        return None
    p = W2SProbeParams.model_validate({k: v for k, v in fixed.items() if k not in ("probes", "probe_grid")})
    return prepare_inputs(p, ctx.artifacts, default_device(), roles)


def _metric_docs() -> dict[str, str]:
    docs = {
        "weak_acc": "the weak teacher's top-1 on the probe test split",
        "w2s_acc": "top-1 of the probe trained on weak labels (last epoch, test split)",
        "strong_acc": "top-1 of the probe trained on ground truth: the strong ceiling (test split)",
        "pgr": "(w2s_acc - weak_acc) / (strong_acc - weak_acc); NaN when strong_acc <= weak_acc",
        "gap": "strong_acc - weak_acc, PGR's denominator",
        "agreement": "how often the W2S probe agrees with the weak teacher's top-1 (test split)",
    }
    docs.update({f"val_{k}": f"{v.split(' (')[0]} on the validation split (n_val > 0)" for k, v in docs.items()})
    docs.update({
        "w2s_train_loss": "mean training loss of the W2S probe in the epoch",
        "strong_train_loss": "mean training loss of the ceiling probe in the epoch",
        "weak_acc_all": "the weak teacher's top-1 over the whole dataset (the seed's printed number)",
        "n_train": "probe training samples", "n_val": "validation samples", "n_test": "test samples",
        "feature_passes": "weak / strong forward passes this trial ran (0 on a feature-cache hit)",
        "model_trainings": "weak / strong models this trial trained (0 on a cache hit)",
        "feature_cache_hits": "how many of the two feature tables were already cached",
        "probe_configs": "probe configurations in the trial", "probes_trained": "distinct probes trained",
    })
    return docs


register_trainable(
    "w2s_probe",
    params=W2SProbeParams,
    metric="w2s_acc",
    mode="max",
    description="Weak-to-strong linear probes on cached embeddings: weak, W2S and strong accuracy and PGR.",
    prepare=prepare_w2s,
    vectorized_keys=PROBE_FIELDS,
    metrics_doc=_metric_docs(),
    vocabulary=Vocabulary(
        headline="w2s_acc",
        table_metrics=W2S_COLUMNS,
        # The weak model teaches the strong one: the summary's teacher and student columns.
        identity={"teacher": ("weak.model", "weak", "weak_model"), "student": ("strong.model", "strong", "strong_model")},
        curves=("w2s_acc",),
        plots=W2S_PLOTS,
        summary=pgr_summary,
    ),
)(run_w2s_probe)
