"""The ``w2s_probe`` family's driver-side step: the weak logits and strong embeddings computed
once, before any trial (:mod:`trainables.w2s_probe.features`), in one process or, with
``resources.workers: N``, sharded over N Ray Train workers (a device each); and the check before
Ray starts that the pass's inputs are there."""
from __future__ import annotations

from typing import Any

from trainables.data import dataset_issues
from trainables.models import weights_issues
from trainables.runtime.session import default_device
from trainables.runtime.trainable import TrialContext
from trainables.w2s_probe.features import Sharding, prepare_inputs
from trainables.w2s_probe.params import W2SProbeParams


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
    storage = f"{ctx.storage_path.rstrip('/')}/w2s-shard-runs" if ctx.storage_path else ""
    sharding = Sharding(p.workers, dict(ctx.worker_resources), storage) if p.workers > 1 else None
    info = prepare_inputs(p, ctx.artifacts, default_device(), roles, sharding)
    if sharding is not None:
        info["feature_shards"] = p.workers
    return info


def check_w2s_inputs(p: W2SProbeParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset, and the weak and strong models' pretrained weights or
    checkpoints, which the feature pass reads (seed 000's ImageNet val, AlexNet, DINO weights)."""
    issues = dataset_issues("dataset", p.dataset, **p.dataset_kwargs)
    sources = []
    for role in ("weak", "strong"):
        source = getattr(p, role)
        sources.append((f"{role}.model_kwargs", source.model, source.model_kwargs))
        if source.checkpoint:
            sources.append((f"{role}.checkpoint", source.model, {"checkpoint": source.checkpoint}))
    return issues + weights_issues(sources)
