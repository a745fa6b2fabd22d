from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class LossParams(BaseModel):
    """Hyperparameters of one loss; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class LossInputs:
    """Everything a loss may look at for one batch.

    ``targets`` holds int64 class labels (N,) or a probability vector per sample (N, C).
    ``progress`` is the fraction of training done, in [0, 1], for losses with schedules.
    """

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    epoch: int = 0
    num_epochs: int = 1
    progress: float = 0.0


class DistillLoss(nn.Module):
    """A training objective. ``forward`` returns a dict holding at least ``"loss"``; other entries
    are detached components for logging. Losses with learnable parts (projectors, memory banks)
    are modules whose parameters join the student's optimizer."""

    registry_name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False

    def __init__(self, params: LossParams, **context):
        super().__init__()
        self.params = params

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against hard labels (N,) or probability targets (N, C)."""
    return nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
