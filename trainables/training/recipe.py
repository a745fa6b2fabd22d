"""The training-recipe keys shared by the student (``distill``) and the teacher recipe: weight-decay
grouping, SGD's Nesterov flag, Adam's betas, the schedule's warm-up start, floor and step decays,
and gradient accumulation. Checked at parse time (:meth:`RecipeParams.check_recipe` once ``lr``
and ``epochs`` are known); they reach the loop as :class:`~trainables.training.classifier_loop.OptimConfig`
fields (:meth:`RecipeParams.recipe_fields`)."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from trainables.core.config import StrictModel

RECIPE_KEYS = ("nesterov", "betas", "wd_exclude_1d", "warmup_lr", "min_lr", "decay_epochs", "milestones",
               "decay_rate", "accum_steps")


class RecipeParams(StrictModel):
    nesterov: bool = Field(True, description="sgd: Nesterov momentum (true) or plain momentum (false)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam / adamw: (beta1, beta2)")
    wd_exclude_1d: bool = Field(True, description="no weight decay on biases and 1-D (norm) parameters, as "
                                "timm and the seed authors; false decays every parameter")
    warmup_lr: float = Field(0.0, ge=0, description="lr the linear warm-up starts from")
    min_lr: float = Field(0.0, ge=0, description="cosine: the lr it ends at")
    decay_epochs: int = Field(30, ge=1, description="step: decay the lr every this many epochs")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which the lr decays")
    decay_rate: float = Field(0.1, gt=0, le=1, description="step / multistep: lr factor at each decay")
    accum_steps: int = Field(1, ge=1, description="micro-batches of batch_size whose gradients are summed "
                             "before one optimiser step")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("betas must each be in [0, 1)")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones_increase(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"milestones must be strictly increasing epochs >= 1, got {v}")
        return v

    def check_recipe(self, lr: float, epochs: int, schedule: str, prefix: str = "") -> None:
        """The checks that need ``lr``, ``epochs`` and ``schedule``; errors name the key (after ``prefix``)."""
        if self.min_lr > lr:
            raise ValueError(f"{prefix}min_lr ({self.min_lr}) must not exceed {prefix}lr ({lr})")
        if self.warmup_lr > lr:
            raise ValueError(f"{prefix}warmup_lr ({self.warmup_lr}) must not exceed {prefix}lr ({lr})")
        if self.milestones and self.milestones[-1] >= epochs:
            raise ValueError(f"{prefix}milestones ({self.milestones}) must lie below {prefix}epochs ({epochs})")
        if schedule == "multistep" and not self.milestones:
            raise ValueError(f"{prefix}schedule multistep needs {prefix}milestones")

    def recipe_fields(self) -> dict[str, Any]:
        """The keys as :class:`OptimConfig` fields."""
        return {k: getattr(self, k) for k in RECIPE_KEYS}
