"""Sel-CL's stage-1 recipe. Every default is the authors' (``train_Sel-CL.py``'s argument defaults,
which their CIFAR run scripts leave as they are); the names in brackets are theirs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainables.core.config import StrictModel


class SelCLConfig(StrictModel):
    epochs: int = Field(250, ge=2, description="[epoch]")
    batch_size: int = Field(128, ge=2, description="[batch_size]")
    lr: float = Field(0.1, gt=0, description="SGD learning rate [lr]")
    momentum: float = Field(0.9, ge=0, lt=1, description="[momentum]")
    weight_decay: float = Field(1e-4, ge=0, description="[wd], on every parameter")
    milestones: list[int] = Field(default_factory=lambda: [125, 200], description="lr decay epochs [lr-decay-epochs]")
    decay_rate: float = Field(0.1, gt=0, le=1, description="[lr-decay-rate]")
    warmup_epochs: int = Field(5, ge=0, description="linear lr warm-up, per update [lr-warmup-epoch]")
    warmup_multiplier: float = Field(100.0, gt=1, description="warm-up starts at lr / this [lr-warmup-multiplier]")
    uns_epochs: int = Field(1, ge=1, description="epochs of unsupervised contrastive learning only, before "
                                                 "any selection [warmup-epoch with warmup_way uns]")
    low_dim: int = Field(128, ge=2, description="contrastive embedding size [low_dim]")
    mixup_alpha: float = Field(1.0, ge=0, description="Beta(a, a) of the mixed batches [alpha_m]")
    ema: float = Field(0.999, ge=0, lt=1, description="momentum encoder's parameter EMA [alpha_moving]")
    example_quantile: float = Field(0.5, ge=0, le=1, description="examples kept per class: this quantile of the "
                                                                 "per-class agreement counts [alpha]")
    pair_quantile: float = Field(0.25, ge=0, le=1, description="pair similarity threshold: this quantile of the "
                                                               "selected same-label pairs' similarities [beta]")
    uns_queue: int = Field(10000, ge=1, description="MoCo negatives queue [uns_queue_k]")
    uns_t: float = Field(0.1, gt=0, description="unsupervised contrastive temperature [uns_t]")
    sup_t: float = Field(0.1, gt=0, description="supervised contrastive temperature [sup_t]")
    sup_queue_begin: int = Field(3, ge=0, description="epochs after which the supervised memory joins [sup_queue_begin]")
    queue_per_class: int = Field(1000, ge=1, description="supervised memory: this x classes x 2 entries [queue_per_class]")
    lambda_s: float = Field(0.01, ge=0, description="weight of the similarity loss [lambda_s]")
    lambda_c: float = Field(1.0, ge=0, description="weight of the classification loss [lambda_c]")
    simi_clip: float = Field(0.25, gt=0, description="max norm of the similarity loss's gradient (the authors clip "
                                                     "it alone, before the other losses' gradients join)")
    k_val: int = Field(250, ge=1, description="neighbours of the kNN label check [k_val]")
    augment: Literal["complex", "simple"] = Field("complex", description="[DA]: complex = random resized crop, flip, "
                                                                         "colour jitter p 0.8, grayscale p 0.2; simple "
                                                                         "= 4 px pad-crop and flip")
    seed: int = Field(1, ge=0, description="[seed_initialization]")

    @model_validator(mode="after")
    def _fits(self):
        if self.uns_epochs >= self.epochs:
            raise ValueError(f"selcl.uns_epochs ({self.uns_epochs}) must be below selcl.epochs ({self.epochs}): "
                             f"selection starts after them")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"selcl.warmup_epochs ({self.warmup_epochs}) must be below selcl.epochs ({self.epochs})")
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad or sorted(self.milestones) != self.milestones:
            raise ValueError(f"selcl.milestones: {self.milestones} must be increasing epochs in 1..{self.epochs - 1}")
        return self

    def memory_problem(self, num_classes: int) -> str | None:
        """Why the pair memory (``queue_per_class`` x classes x 2 entries) cannot hold one step's push
        (two mixed views of a batch) for a dataset of ``num_classes``, or None."""
        if self.queue_per_class * num_classes >= self.batch_size:
            return None
        return (f"{self.queue_per_class} per class x {num_classes} classes x 2 = {2 * self.queue_per_class * num_classes} "
                f"memory entries cannot hold one step's {2 * self.batch_size} (two views of batch_size "
                f"{self.batch_size}); accepted: at least {-(-self.batch_size // num_classes)}")
