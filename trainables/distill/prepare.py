"""The ``distill`` family's driver-side steps, before any trial: the teacher trained once up front,
and the check that the dataset is there."""
from __future__ import annotations

from typing import Any

from trainables.data import dataset_issues
from trainables.distill.loop import load_teacher
from trainables.distill.params import DistillParams
from trainables.runtime.trainable import TrialContext
from trainables.training.dataset_params import prepare_fixed_dataset


def prepare_distill(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    """Train the teacher once, up front, unless its recipe is itself searched (then the first
    trial that needs each recipe builds it, under the cache's lock)."""
    prepare_fixed_dataset(DistillParams, fixed, searched)
    # label_noise changes the teacher's training labels, so it is part of its recipe too.
    teacher_keys = {"dataset", "split_seed", "label_noise"} | {
        k for k in searched if k == "teacher" or k.startswith(("teacher.", "dataset_kwargs", "label_noise."))}
    if teacher_keys & searched:
        return None
    defaults = DistillParams.model_validate({k: v for k, v in fixed.items()
                                             if k in ("dataset", "dataset_kwargs", "split_seed", "teacher", "label_noise")})
    entry = load_teacher(defaults, ctx)
    return {"teacher_cache_id": entry.key, "teacher_cache_hit": entry.hit, **{f"teacher_{k}": v
            for k, v in entry.meta.items() if k in ("val_acc", "test_acc")}}


def check_distill_inputs(p: DistillParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset must be on disk (or downloadable)."""
    return dataset_issues("dataset", p.dataset, **p.dataset_kwargs)
