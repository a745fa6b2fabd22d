"""The training-recipe keys shared by the student (``distill``) and the teacher recipe
(``teacher.*``): on-device augmentation, weight-decay grouping, SGD's Nesterov flag, Adam's betas,
layer-wise lr decay, the schedule's warm-up start, floor and step decays, and gradient
accumulation. Checked at parse time (:meth:`RecipeParams.check_recipe` once ``lr`` and ``epochs``
are known); they reach the loop as :class:`~trainables.training.classifier_loop.OptimConfig`
fields (:meth:`RecipeParams.recipe_fields`) and as a
:class:`~trainables.training.batch_augment.BatchAugment` (:func:`~trainables.training.batch_augment.batch_augment_of`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainables.core.config import StrictModel
from trainables.data.augment import AugmentName
from trainables.data.policy import AUTO_AUGMENTS
from trainables.data.timm_policy import INTERPOLATIONS, TimmPolicy, is_timm_config
from trainables.training.diffaugment import DAPT_STRATEGY, parse_strategy

RECIPE_KEYS = ("nesterov", "betas", "wd_exclude_1d", "layer_decay", "warmup_lr", "min_lr", "decay_epochs",
               "milestones", "decay_rate", "accum_steps")
# Augmentation keys whose ops are drawn afresh on every step (no fixed set of views to cache).
PER_STEP_KEYS = ("auto_augment", "color_jitter", "random_erasing", "diffaugment", "mixup_alpha", "cutmix_alpha")


class AugmentParams(StrictModel):
    """Training-batch augmentation, run on the device in this order: the geometric view
    (``augment``), then the photometric policy (``auto_augment``, or ``color_jitter`` when there is
    no policy, as timm does), then ``random_erasing``, then DiffAugment (``diffaugment``), then
    mixup / cutmix (soft targets)."""

    augment: AugmentName = Field("none", description="geometric view: none | flip_crop (pad, random crop, flip) "
                                 "| rrc_flip (RandomResizedCrop, flip)")
    crop_pad: int = Field(4, ge=0, le=64, description="flip_crop: pixels of padding before the crop")
    pad_mode: Literal["reflect", "zeros", "black"] = Field(
        "reflect", description="flip_crop's border: reflect | zeros (0 in the normalised data: the mean colour) | "
        "black (pixel value 0: torchvision's RandomCrop(size, padding))")
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="rrc_flip: crop area range (fractions)")
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="rrc_flip: crop aspect-ratio range (w/h)")
    hflip: float = Field(0.5, ge=0, le=1, description="flip_crop / rrc_flip: probability of the horizontal flip "
                         "(timm's hflip; 0 where mirror images change the class, as digits)")
    auto_augment: str = Field(
        "none", description="photometric policy: a timm config string, drawn per image as timm does "
        "(rand-m9-mstd0.5-inc1, original-mstd0.5, v0, ...; trainables/data/timm_policy.py), or kornia's "
        "none | randaugment | autoaugment_cifar10 | autoaugment_imagenet | trivialaugment")
    randaugment_n: int = Field(2, ge=1, le=14, description="kornia randaugment: ops applied per image")
    randaugment_m: float = Field(9.0, gt=0, lt=10, description="kornia randaugment: magnitude on timm's 0-10 "
                                 "scale (rand-m9 = 9)")
    policy_groups: int = Field(8, ge=1, le=512, description="kornia policies: the batch is split into this many "
                               "groups, each drawing its own policy ops (kornia draws ops per call)")
    policy_interpolation: Literal[INTERPOLATIONS] = Field(  # type: ignore[valid-type]
        "bilinear", description="a timm policy's affine ops: bilinear | bicubic | random (either per image and "
        "op), timm's create_transform(interpolation=...)")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness / contrast / saturation jitter "
                                "strength (timm's color_jitter); ignored when auto_augment is set, as in timm")
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability of erasing one box per image, "
                                  "filled with per-pixel normal noise (timm's reprob, remode pixel)")
    diffaugment: Literal["none", "S", "M"] = Field("none", description="DAPT's DiffAugment on the device: S = one "
                                                   "op of the strategy per batch, M = all of them")
    diffaugment_strategy: str = Field(DAPT_STRATEGY, description="DiffAugment ops joined by _ (flip, color, crop, "
                                      "rotate, scale, cutout); DAPT's is all six")
    mixup_alpha: float = Field(0.0, ge=0, le=10, description="mixup Beta(alpha, alpha); 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, le=10, description="cutmix Beta(alpha, alpha); 0 = off")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability a batch is mixed")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="with both on: probability of cutmix over mixup")

    @field_validator("auto_augment")
    @classmethod
    def _policy_known(cls, v: str) -> str:
        if v in AUTO_AUGMENTS:
            return v
        if is_timm_config(v):
            TimmPolicy(v)  # timm parses the string; its ops must be ones run here
            return v
        raise ValueError(f"unknown policy; accepted: a timm config string (rand-m9-mstd0.5-inc1, "
                         f"original-mstd0.5, v0, ...) or {', '.join(AUTO_AUGMENTS)}")

    @model_validator(mode="after")
    def _kornia_keys_with_kornia(self):
        # Judged by value, not by which keys were given: recipes travel as full dumps (a teacher's),
        # where every key looks set.
        def changed(key: str) -> bool:
            return getattr(self, key) != type(self).model_fields[key].default

        if is_timm_config(self.auto_augment):
            for key in ("randaugment_n", "randaugment_m", "policy_groups"):
                if changed(key):
                    raise ValueError(f"{key}: applies to kornia's policies; the timm string "
                                     f"{self.auto_augment!r} sets its own ops and draws them per image")
        elif changed("policy_interpolation"):
            raise ValueError(f"policy_interpolation: applies to timm's policy strings (rand-m9-mstd0.5-inc1, "
                             f"original-mstd0.5, ...); auto_augment is {self.auto_augment!r}")
        return self

    @field_validator("diffaugment_strategy")
    @classmethod
    def _strategy_ops(cls, v: str) -> str:
        parse_strategy(v)
        return v

    @field_validator("rrc_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("rrc_scale must be (low, high) with 0 < low <= high <= 1")
        return v

    @field_validator("rrc_ratio")
    @classmethod
    def _ratio_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("rrc_ratio must be (low, high) with 0 < low <= high")
        return v

    @property
    def mixes(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def per_step_ops(self) -> list[str]:
        """The augmentation keys set here that draw new random ops every step."""
        active = {"auto_augment": self.auto_augment != "none", "color_jitter": self.color_jitter > 0,
                  "random_erasing": self.random_erasing > 0, "diffaugment": self.diffaugment != "none",
                  "mixup_alpha": self.mixes and self.mixup_alpha > 0,
                  "cutmix_alpha": self.mixes and self.cutmix_alpha > 0}
        return [k for k in PER_STEP_KEYS if active[k]]


class RecipeParams(AugmentParams):
    nesterov: bool = Field(True, description="sgd: Nesterov momentum (true) or plain momentum (false)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam / adamw: (beta1, beta2)")
    wd_exclude_1d: bool = Field(True, description="no weight decay on biases and 1-D (norm) parameters, as "
                                "timm and the seed authors; false decays every parameter")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay (timm's "
                                      "param_groups_layer_decay): layer i of L gets lr * layer_decay^(L - i)")
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

    def check_recipe(self, lr: float, epochs: int, schedule: str, prefix: str = "", batch_size: int = 0) -> None:
        """The checks that need ``lr``, ``epochs`` and ``schedule``; errors name the key (after ``prefix``)."""
        if self.min_lr > lr:
            raise ValueError(f"{prefix}min_lr ({self.min_lr}) must not exceed {prefix}lr ({lr})")
        if self.warmup_lr > lr:
            raise ValueError(f"{prefix}warmup_lr ({self.warmup_lr}) must not exceed {prefix}lr ({lr})")
        if self.milestones and self.milestones[-1] >= epochs:
            raise ValueError(f"{prefix}milestones ({self.milestones}) must lie below {prefix}epochs ({epochs})")
        if schedule == "multistep" and not self.milestones:
            raise ValueError(f"{prefix}schedule multistep needs {prefix}milestones")
        if self.mixes and batch_size and batch_size % 2:
            # the key alone: a nested recipe's location (teacher) is added by the error's path
            raise ValueError(f"batch_size: mixup / cutmix pairs each image with another of its batch, "
                             f"so it needs an even batch_size")

    def recipe_fields(self) -> dict[str, Any]:
        """The optimiser and schedule keys as :class:`OptimConfig` fields."""
        return {k: getattr(self, k) for k in RECIPE_KEYS}
