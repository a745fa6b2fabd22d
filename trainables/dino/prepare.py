"""The ``dino`` family's driver-side steps: the dataset fetched once, and the checks before Ray
starts: that it is there, and that a fused trial's members fit the device."""
from __future__ import annotations

import functools
import json
from typing import Any

import torch

from trainables.data import DatasetSplits, dataset_issues, load_dataset
from trainables.dino.params import DinoParams
from trainables.models import weights_issues
from trainables.runtime.trainable import TrialContext
from trainables.training.dataset_params import prepare_fixed_dataset
from trainables.training.fused import device_memory_bytes, forward_bytes, fusion_problem


def prepare_dino(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    prepare_fixed_dataset(DinoParams, fixed, searched)
    return None


def check_dino_inputs(p: DinoParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset, and the encoder's pretrained weights or checkpoint."""
    issues = dataset_issues("dataset", p.dataset, **p.dataset_kwargs)
    issues += weights_issues([("encoder_kwargs", p.encoder, p.encoder_kwargs)])
    if p.is_fused and not issues:
        problem = fused_memory_problem(p)
        if problem:
            issues.append(("vectorize", problem))
    return issues


# Small: it holds whole datasets in the driver (the estimate needs their shape and normalisation), for
# the checks of one sweep's trials.
@functools.lru_cache(maxsize=2)
def _data(dataset: str, kwargs: str, split_seed: int) -> DatasetSplits:
    return load_dataset(dataset, seed=split_seed, **json.loads(kwargs))


def build_dino_model_for_estimate(p: DinoParams, data: DatasetSplits | None = None):
    """The student network a member of ``p`` trains (initialised from a fixed seed: only its size counts)."""
    from trainables.dino.model import build_dino_model

    data = data or _data(p.dataset, json.dumps(p.dataset_kwargs, sort_keys=True), p.split_seed)
    with torch.random.fork_rng(devices=[]):  # seeding it must not move the caller's random stream
        return build_dino_model(p, data, init_seed=0)


def member_bytes(p: DinoParams, data: DatasetSplits) -> int:
    """An estimate of one fused dino member's training memory: the student's weights, gradients
    and optimiser state (one buffer for SGD, two for Adam(W)), the teacher's weights, and the
    student's forward outputs on a batch of every crop (what backward may keep). The teacher's
    forward runs without gradients, so its activations are transient and left out."""
    student = build_dino_model_for_estimate(p, data)
    params = sum(q.numel() * q.element_size() for q in student.parameters())
    states = 2 if p.optimizer in ("adam", "adamw") else 1
    channels, image = data.input_shape[0], data.input_shape[-1]
    c = p.crops
    crops = [(c.global_size or image, c.global_crops), (c.local_size or image, c.local_crops)]
    activations = sum(forward_bytes(student, (channels, size, size), p.batch_size * n) for size, n in crops if n)
    return (2 + states) * params + params + activations


def fused_memory_problem(p: DinoParams) -> str | None:
    """A fused trial whose members cannot all fit the device (an estimate, before Ray starts)."""
    data = _data(p.dataset, json.dumps(p.dataset_kwargs, sort_keys=True), p.split_seed)
    budget, where = device_memory_bytes()
    return fusion_problem(p.members, member_bytes(p, data), budget, where, p.batch_size)
