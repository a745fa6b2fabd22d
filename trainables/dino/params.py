"""The ``dino`` family's parameters: the DINO head (:class:`HeadConfig`), the multi-crop views
(:class:`CropConfig`), and the trial's (:class:`DinoParams`: encoder, teacher mode and updates,
supervised comparison, optimisation, probes)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from trainables.core.config import StrictModel
from trainables.core.registry import kwargs_validator
from trainables.losses import check_loss_params
from trainables.models import ModelName, check_model_kwargs
from trainables.runtime.vectorize import GRID_KEY, PROBES_KEY, FusedMembers
from trainables.training.dataset_params import DatasetParams

# What the members of a fused trial (``vectorize: K``, trainables/dino/fused.py) may differ in: the
# optimisation, the teacher's EMA, the inits and the loss, values that leave the data, the crops and
# the computation's shape alone. Everything else (encoder, head, crops, batch size, epochs, dataset,
# n_samples, teacher_mode, probes) is the trial's and shared by its members. ``seed`` orders the
# batches and draws the crops: those are member 0's; a member's own seed sets its linear probes.
MEMBER_FIELDS = ("lr", "weight_decay", "weight_decay_end", "momentum", "betas", "min_lr", "clip_grad",
                 "loss_params", "teacher_momentum", "teacher_momentum_final", "teacher_init_seed", "student_init",
                 "student_init_seed", "student_init_alpha", "student_init_eps", "seed")


class HeadConfig(StrictModel):
    """DINO head: MLP (Linear [+BN] + activation per hidden layer), then the l2 bottleneck
    Linear(hidden -> bottleneck) -> L2-normalise -> weight-normalised Linear(bottleneck -> out_dim,
    no bias). ``bottleneck_dim`` 0 replaces the bottleneck with a plain Linear(hidden -> out_dim).
    ``kind: identity`` is no head at all: the encoder's features are the output (out_dim = the
    encoder's feature size), as dinopl's MSE / no-head / SGD runs; it takes no other head field."""

    kind: Literal["dino", "identity"] = "dino"
    hidden_dims: list[int] = Field(default_factory=lambda: [2048, 2048])
    bottleneck_dim: int = Field(256, ge=0)
    out_dim: int = Field(65536, ge=2)
    activation: Literal["gelu", "relu"] = "gelu"
    batch_norm: bool = False
    weight_norm: bool = True
    last_layer_bias: bool = Field(False, description="a bias in the last Linear (weight_norm false only)")
    init: Literal["trunc_normal", "default"] = "trunc_normal"

    @field_validator("hidden_dims")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError("hidden sizes are positive")
        return v

    @model_validator(mode="after")
    def _identity_alone(self):
        extra = sorted(self.model_fields_set - {"kind"})
        if self.kind == "identity" and extra:
            raise ValueError(f"head.kind 'identity' is no head: it takes no other head field (got {', '.join(extra)})")
        if self.last_layer_bias and self.weight_norm:
            raise ValueError("head.last_layer_bias needs head.weight_norm false (the normalised last layer has no bias)")
        return self


class CropConfig(StrictModel):
    """Multi-crop views, made on the device: per image, a random resized crop (area fraction in
    ``scale``, aspect ratio in 3/4..4/3) resized to ``size`` px (None: the image size), then a
    horizontal flip with probability 0.5 when ``hflip``. The teacher sees the global crops, the
    student all crops. One global crop at scale [1, 1] without flip is the un-augmented image.
    ``augs`` / ``per_crop_augs`` add dinopl's augmentations (``hflip``, ``padcrop``, ``dino``)
    before the crops and on each crop; both empty (the default) is no further augmentation."""

    global_crops: int = Field(2, ge=1)
    global_size: int | None = Field(None, ge=1)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = Field(0, ge=0)
    local_size: int | None = Field(None, ge=1)
    local_scale: tuple[float, float] = (0.05, 0.4)
    hflip: bool = True
    # --- dinopl's augmentations (issue 15): trainables/dino/crops.py, docs/search_spaces.md#dino ---
    augs: list[Literal["hflip", "padcrop", "dino"]] = Field(
        default_factory=list, description="dinopl's --augs: applied once per image before the crops, in order")
    per_crop_augs: list[Literal["hflip", "padcrop", "dino"]] = Field(
        default_factory=list, description="dinopl's --per_crop_augs: applied to each crop, in order")
    padcrop_padding: int = Field(4, ge=0, description="padcrop: black border in pixels before the random crop")
    dino_choice: Literal["by_crop", "random"] = Field(
        "by_crop", description="dino per crop: by_crop = DINO's settings by position (global 1, global 2, "
                               "locals); random = dinopl's per-image choice among the three (p 0.4/0.4/0.2)")
    blur_min_size: int = Field(64, ge=0, description="dino: no Gaussian blur on images smaller than this "
                                                     "(dinopl: 64, so none on CIFAR / MNIST); 0 = always")

    @field_validator("augs", "per_crop_augs", mode="before")
    @classmethod
    def _aug_names(cls, v):
        # dinopl also takes names joined by '_' ("hflip_padcrop"), as one string or list items
        items = [v] if isinstance(v, str) else v
        if isinstance(items, (list, tuple)) and all(isinstance(i, str) for i in items):
            return [name for item in items for name in item.split("_") if name]
        return v

    @property
    def augmented(self) -> bool:
        """Whether any dinopl augmentation is on (otherwise the crops are the plain ones)."""
        return bool(self.augs or self.per_crop_augs)

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("a crop scale is [min, max] with 0 < min <= max <= 1")
        return v


class DinoParams(FusedMembers, DatasetParams):
    member_fields: ClassVar[tuple[str, ...]] = MEMBER_FIELDS
    encoder: ModelName = "cnn"
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    head: HeadConfig = Field(default_factory=HeadConfig)
    crops: CropConfig = Field(default_factory=CropConfig)
    loss_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the dino loss")
    teacher_mode: Literal["ema", "no_update", "prev_epoch"] = "ema"
    teacher_momentum: float = Field(0.996, ge=0.0, le=1.0, description="EMA momentum at step 0")
    teacher_momentum_final: float = Field(1.0, ge=0.0, le=1.0, description="EMA momentum at the last step (cosine)")
    teacher_update_every: int = Field(1, ge=1, description="prev_epoch: copy the student every this many epochs")
    teacher_eval: bool = Field(False, description="run the teacher in eval mode on training batches")
    teacher_init_seed: int = Field(0, ge=0)
    student_init: Literal["teacher", "random", "interpolated", "neighborhood"] = "teacher"
    student_init_seed: int | None = Field(None, ge=0,
                                          description="random student init; None = continue the teacher's stream")
    supervised: bool = Field(False, description="replace the teacher by (noisy) one-hot labels")
    label_noise: float = Field(0.0, ge=0.0, le=1.0)
    logit_noise: float = Field(0.0, ge=0.0)
    label_logit: float = Field(1.0, gt=0.0, description="supervised: the teacher logit of the label class")
    logit_noise_kind: Literal["additive", "gaussian"] = Field(
        "additive", description="logit_noise: additive = Gaussian noise of this std on the one-hot logits; "
                                "gaussian = dinopl's label-free targets, unit-norm Gaussian logits / logit_noise")
    n_classes: int | None = Field(None, ge=2, description="logit_noise_kind gaussian: the target logits' "
                                                          "dimension; None = the dataset's classes")
    resample_noise: bool = Field(True, description="supervised noise drawn anew every step (true) or once per "
                                                   "training image from seed (false, dinopl's precomputed targets)")
    inputs_as_logits: bool = Field(False, description="supervised: the target is the first global crop's pixels, "
                                                      "flattened (head.out_dim = C x size x size)")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(5e-4, gt=0, le=10)
    weight_decay: float = Field(0.04, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(10, ge=0)
    clip_grad: float = Field(3.0, ge=0, description="total gradient-norm clip; 0 = off")
    freeze_last_layer_epochs: int = Field(1, ge=0)
    # --- optimisation (issue 15) ---
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam(W)'s (β1, β2), each in [0, 1)")
    min_lr: float = Field(0.0, ge=0, description="cosine schedule: the lr of the last update (dinopl: 1e-6)")
    weight_decay_end: float | None = Field(None, ge=0, description="cosine weight decay from weight_decay at the "
                                                                   "first update to this at the last; None = constant")
    n_steps: int | None = Field(None, ge=1, description="train for exactly this many optimiser updates (overrides "
                                                        "epochs); None = epochs")
    batch_accum: int = Field(1, ge=1, description="micro-batches of batch_size accumulated per optimiser update")
    samples_per_epoch: int | None = Field(None, ge=1, description="an epoch draws this many training samples "
                                                                  "(concatenated permutations); None = the split")
    float64: bool = Field(False, description="train in double precision (no autocast)")
    probe_every: int = Field(10, ge=1)
    knn_k: int = Field(20, ge=1)
    knn_temperature: float | None = Field(0.07, gt=0, description="None: majority vote")
    probe_epochs: int = Field(20, ge=1)
    probe_lr: float = Field(1e-3, gt=0)
    probe_weight_decay: float = Field(0.0, ge=0)
    probe_batch_size: int = Field(256, ge=1)
    # --- student init / data size (issue 15) ---
    student_init_alpha: float = Field(0.0, ge=0.0, le=1.0,
                                      description="interpolated: (1 - α)·teacher + α·random (0 = the teacher)")
    student_init_eps: float = Field(0.0, ge=0.0, description="neighborhood: teacher + ε·random")
    student_init_var_preserving: bool = Field(False, description="interpolated / neighborhood: rescale to the "
                                                                 "random init's variance")
    teacher_bn_mode: Literal["from_data", "from_student"] = Field(
        "from_data", description="the teacher's BN running statistics: its own (from_data) or the student's")
    n_samples: int | None = Field(None, ge=1, description="train on a seeded stratified subset of this size; "
                                                          "None = the whole training split")
    # --- probes / objectives (issue 15) ---
    knn_metric: Literal["cosine", "l2"] = Field(
        "cosine", description="cosine: similarity-weighted vote (knn_temperature) or majority; "
                              "l2: Euclidean distance, majority vote (dinopl / the paper; knn_temperature null)")
    probe_normalized: bool = Field(
        True, description="also probe train-standardised features: the *_normalized metrics")
    # --- tracking (issue 15) ---
    track_feathist: bool = Field(False, description="feat_<model>_<encoder|head>_<stat> metrics on a fixed batch")
    track_samples: int = Field(256, ge=2, description="track_feathist: the first this many training images")
    track_gradvar: bool = Field(False, description="grad_var*: variance of the gradient over an epoch's updates")
    save_paramstats: list[Literal["student", "teacher"]] = Field(
        default_factory=list, description="per-layer norms / distance from init: checkpoint entry paramstats "
                                          "and param_* metrics ('all' = both)")
    track_every: int = Field(1, ge=1, description="feathist / gradvar / paramstats every this many epochs "
                                                  "(and the last)")
    save_features: Literal["none", "last", "probe"] = Field(
        "none", description="student encoder features of train/val/test in the checkpoint entry features")
    keep_loss_max: bool = Field(False, description="dinopl's --save_ckpt loss_max: parameters at the update with "
                                                   "the highest loss, checkpoint entry loss_max")
    # --- fused trials ---
    vectorize: int | None = Field(None, ge=1, le=256, description="fused trial: (student, teacher) pairs trained "
                                  "together on the same batches and crops, each with its own sampled lr / "
                                  "weight decay / teacher momentum / init seeds / loss_params / seed")
    probes: list[dict[str, Any]] | None = Field(None, description="set by the sweep: the members' sampled values")
    probe_grid: dict[str, list[Any]] | None = Field(None, description="set by the sweep: the members' grid values")

    @field_validator("save_paramstats", mode="before")
    @classmethod
    def _paramstats_all(cls, v):
        items = [v] if isinstance(v, str) else v
        if isinstance(items, (list, tuple)) and "all" in items:
            return ["student", "teacher"]
        return list(dict.fromkeys(items)) if isinstance(items, (list, tuple)) else v

    _encoder_kwargs_fit = kwargs_validator("encoder", "encoder_kwargs", check_model_kwargs)

    @model_validator(mode="after")
    def _consistent(self):
        check_loss_params("dino", self.loss_params)
        if self.n_steps is None and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.teacher_momentum_final < self.teacher_momentum:
            raise ValueError("teacher_momentum_final must be at least teacher_momentum")
        if self.teacher_bn_mode == "from_student" and not self.teacher_eval:
            raise ValueError("teacher_bn_mode: from_student needs teacher_eval: true (in train mode the teacher "
                             "normalises with batch statistics and overwrites the copied ones; dinopl refuses it too)")
        if self.n_samples is not None and self.n_samples < self.batch_size:
            raise ValueError(f"n_samples ({self.n_samples}) must be at least batch_size ({self.batch_size}): "
                             "the last partial batch of an epoch is dropped, so no step would run")
        if self.knn_metric == "l2" and self.knn_temperature is not None:
            raise ValueError(f"knn_temperature must be null (majority vote) with knn_metric 'l2' "
                             f"(got {self.knn_temperature}): the temperature weights cosine similarities only")
        self._check_optimisation()
        self._check_supervised()
        if self.is_fused:
            self._fused_fits()
        return self

    def _fused_fits(self) -> None:
        """What a fused trial cannot do, refused before it starts."""
        accepted = ", ".join(MEMBER_FIELDS)
        for entry in [*(self.probes or []), self.probe_grid or {}]:
            for key in entry:
                if key.split(".")[0] not in MEMBER_FIELDS:
                    raise ValueError(f"{PROBES_KEY}: {key} cannot differ between the members of a fused trial "
                                     f"(they share the data, crops and shapes; vectorize: {self.vectorize}); "
                                     f"per-member keys: {accepted}")
        refused = [("workers", self.workers > 1, "a fused dino trial trains on one worker; use resources.workers 1"),
                   ("save_paramstats", bool(self.save_paramstats), "checkpoint entries are one trial's; use []"),
                   ("save_features", self.save_features != "none", "checkpoint entries are one trial's; use none"),
                   ("keep_loss_max", self.keep_loss_max, "checkpoint entries are one trial's; use false")]
        for key, bad, why in refused:
            if bad:
                raise ValueError(f"{key}: {why} (vectorize: {self.vectorize})")
        self.member_params()

    def _check_supervised(self) -> None:
        """The supervised targets' keys: each applies to one kind of target (dinopl refuses the same mixes)."""
        set_ = self.model_fields_set
        if not self.supervised:
            for key in ("label_noise", "logit_noise", "n_classes", "inputs_as_logits", "logit_noise_kind",
                        "resample_noise"):
                if key in set_ and getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"{key} needs supervised: true (got {key} {getattr(self, key)!r})")
        if self.label_noise > 0 and self.logit_noise > 0 and self.logit_noise_kind == "gaussian":
            raise ValueError("label_noise and logit_noise_kind gaussian exclude each other: the Gaussian targets "
                             f"ignore the labels (got label_noise {self.label_noise}, logit_noise {self.logit_noise})")
        if self.n_classes is not None and not (self.logit_noise > 0 and self.logit_noise_kind == "gaussian"):
            raise ValueError(f"n_classes ({self.n_classes}) sets the size of the Gaussian target logits: it needs "
                             "logit_noise > 0 and logit_noise_kind gaussian (label targets have the dataset's classes)")
        if self.inputs_as_logits and (self.label_noise > 0 or self.logit_noise > 0):
            raise ValueError("inputs_as_logits: the targets are the images, so label_noise and logit_noise must be 0 "
                             f"(got {self.label_noise}, {self.logit_noise})")

    def _check_optimisation(self) -> None:
        """The optimisation keys (issue 15): each error names its key."""
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be two numbers in [0, 1) (got {list(self.betas)})")
        if "betas" in self.model_fields_set and self.optimizer == "sgd":
            raise ValueError("betas apply to optimizer adam / adamw only (got optimizer 'sgd'; use momentum)")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be at most lr ({self.lr})")
        if self.min_lr > 0 and self.schedule != "cosine":
            raise ValueError(f"min_lr is the floor of the cosine schedule (got schedule {self.schedule!r})")
        per_update = self.batch_size * self.batch_accum
        if self.samples_per_epoch is not None and self.samples_per_epoch < per_update:
            raise ValueError(f"samples_per_epoch ({self.samples_per_epoch}) must be at least batch_size x batch_accum "
                             f"({per_update}): an epoch would make no optimiser update")
        if self.n_samples is not None and self.samples_per_epoch is None and self.n_samples < per_update:
            raise ValueError(f"batch_accum ({self.batch_accum}) x batch_size ({self.batch_size}) exceeds n_samples "
                             f"({self.n_samples}): an epoch would make no optimiser update")

    @model_validator(mode="after")
    def _check_tracking(self):
        """The tracking keys (issue 15): a modifier without what it modifies is an error."""
        tracked = self.track_feathist or self.track_gradvar or bool(self.save_paramstats)
        if "track_every" in self.model_fields_set and not tracked:
            raise ValueError("track_every needs track_feathist, track_gradvar or save_paramstats")
        if "track_samples" in self.model_fields_set and not self.track_feathist:
            raise ValueError("track_samples needs track_feathist: true")
        return self
