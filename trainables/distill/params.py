"""The ``distill`` family's parameters: the teacher recipe, how the teacher's signal reaches the
student (``teacher_mode``, augmentation and fixed views), the student and its init, the loss and
the optimisation."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from trainables.core.registry import kwargs_validator
from trainables.distill.fewshot import FewShotConfig, check_fewshot
from trainables.data.generated import SyntheticSet
from trainables.distill.teacher import Optimizer, Schedule, TeacherRecipe
from trainables.init import WeightSelectionConfig, check_student_init
from trainables.losses import LossName, check_loss_params, loss_class, validate_loss_params
from trainables.models import ModelName, check_model_kwargs, predicts_with_untrained_head, supports_layer_decay
from trainables.training.classifier_loop import COMPILE_MODES, graph_blockers
from trainables.training.dataset_params import DatasetParams
from trainables.training.noise_params import LabelNoiseConfig, check_label_noise
from trainables.runtime.vectorize import FusedMembers
from trainables.selcl.config import SelCLConfig
from trainables.training.recipe import RecipeParams

# What the members of a fused trial (``vectorize: K``) may differ in: values that leave the
# computation's shape alone. Everything else (architecture, batch size, epochs, data, teacher) is
# the trial's and shared by its members.
MEMBER_FIELDS = ("lr", "weight_decay", "momentum", "loss_params", "seed")


def shared_member_keys(fixed: dict[str, Any], candidates: dict[str, list[Any]]) -> dict[str, str]:
    """The ``loss_params`` keys that set the shape of a loss's own parameters or state (its
    ``member_shape_params``), for every loss the sweep can pick: a fused trial stacks its members'
    loss modules, so they share them (``TrainableDef.shared_member_keys``)."""
    losses = candidates.get("loss") or [fixed.get("loss", DistillParams.model_fields["loss"].default)]
    reasons: dict[str, str] = {}
    for name in losses:
        try:
            shaped = loss_class(name).member_shape_params
        except (KeyError, ValueError):  # an unknown loss: refused by its own check
            continue
        for key in shaped:
            reasons.setdefault(f"loss_params.{key}", f"it sets the shape of {name}'s own parameters")
    return reasons


class DistillParams(FusedMembers, DatasetParams, RecipeParams):
    member_fields: ClassVar[tuple[str, ...]] = MEMBER_FIELDS
    teacher: TeacherRecipe = Field(default_factory=TeacherRecipe)
    synthetic: SyntheticSet = Field(default_factory=SyntheticSet, description="generated training images "
                                    "(DAPT's synthetic-data distillation)")
    teacher_mode: Literal["cached", "online", "sampled_views"] = Field(
        "cached", description="cached | sampled_views: teacher logits computed once (per view) and looked up; "
        "online: teacher forward every step")
    teacher_bn: Literal["eval", "train"] = Field(
        "eval", description="online teacher's batch norms: eval (running statistics) | train (each batch's "
        "statistics, running ones updated, as a teacher left in train mode: the noisy-label authors')")
    teacher_views: int = Field(8, ge=1, le=256, description="cached / sampled_views with augment: fixed "
                               "augmented views per image whose teacher logits are cached")
    view_seed: int = Field(0, ge=0, description="seed that regenerates the fixed views (shared by all trials)")
    compile: bool | str = Field(False, description="torch.compile the student's training forward: false | true "
                                "(= default) | default | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs")
    cuda_graphs: bool | Literal["auto"] = Field(
        "auto", description="each full training step (student forward, loss, backward, update) captured as a CUDA "
        "graph once per epoch and replayed: auto (on CUDA, unless compile, accum_steps > 1, bootstrap_beta or DDP "
        "workers keep it off) | true (the same; an error where one of those is set) | false (eager steps). A fused "
        "trial's counterpart is fused_forward streams")
    student: ModelName = "mlp"
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    student_init: str = Field("random", description="random | pretrained | weight_selection | selcl | a checkpoint "
                              "file")
    selcl: SelCLConfig = Field(default_factory=SelCLConfig, description="Sel-CL's stage-1 recipe for student_init "
                               "selcl (default: the authors'); also teacher.selcl's default")
    weight_selection: WeightSelectionConfig = Field(default_factory=WeightSelectionConfig)
    loss: LossName = "kd"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Schedule = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="model EMA of the student (timm ModelEmaV3), "
                                    "updated after every optimiser step; reports ema_val_acc / ema_test_acc")
    bootstrap_beta: float = Field(0.0, ge=0, lt=1, description="Sel-CL+'s bootstrapped labels: from epoch "
                                  "bootstrap_start the label target is (1 - beta) * the (mixed) labels + beta * the "
                                  "(mixed) one-hot of the student's own prediction on the un-augmented image; 0 = off")
    bootstrap_start: int = Field(0, ge=0, description="bootstrap_beta: the first epoch (0-based) with the bootstrapped "
                                 "labels; the authors' 30 (their epochs 31..70)")
    fewshot: FewShotConfig | None = Field(None, description="N-way K-shot evaluation on the dataset's novel "
                                          "classes, and the optional Meta-Baseline stage (trainables/distill/fewshot.py)")
    label_noise: LabelNoiseConfig = Field(default_factory=LabelNoiseConfig,
                                          description="noise on the training labels of teacher and student")
    vectorize: int | None = Field(None, ge=1, le=256, description="fused trial: students trained together in one "
                                  "step, each with its own sampled lr / weight_decay / momentum / loss_params / seed")
    fused_forward: Literal["auto", "vmap", "loop", "streams"] = Field(
        "auto", description="a fused trial's forward: vmap (one batched computation), loop (one member after "
        "another, sharing the batch work), streams (each member's step a CUDA graph on a stream of its own; "
        "eager member by member on a CPU), auto (streams on CUDA; with DDP workers or compile, vmap at batches "
        "up to 256 and loop above; loop on a CPU)")
    probes: list[dict[str, Any]] | None = Field(None, description="set by the sweep: the members' sampled values")
    probe_grid: dict[str, list[Any]] | None = Field(None, description="set by the sweep: the members' grid values")

    _student_kwargs_fit = kwargs_validator("student", "student_kwargs", check_model_kwargs)

    def _per_step_ops_fit(self) -> None:
        """Ops drawn afresh every step have no fixed views whose teacher outputs could be cached;
        mixing needs a loss that takes soft targets; layer decay needs a model with layer groups."""
        cls = loss_class(self.loss)
        per_step = self.per_step_ops()
        if per_step and cls.needs_teacher and self.teacher_mode != "online":
            raise ValueError(f"teacher_mode: {per_step[0]} draws new random ops every step, so the teacher's "
                             f"outputs cannot be cached ({self.teacher_mode!r}); use teacher_mode online, or keep "
                             f"only the geometric augment, whose views can be cached")
        if self.mixes and not cls.soft_targets:
            key = "mixup_alpha" if self.mixup_alpha > 0 else "cutmix_alpha"
            raise ValueError(f"{key}: loss {self.loss!r} takes class labels only, and mixup / cutmix make soft "
                             f"targets; use a loss that takes them, or mixup_alpha = cutmix_alpha = 0")
        if self.layer_decay is not None and not supports_layer_decay(self.student):
            raise ValueError(f"layer_decay: student {self.student!r} has no layer groups; layer-wise lr decay "
                             f"needs a timm model (timm:NAME or a timm alias)")

    def _graphs_fit(self) -> None:
        """``cuda_graphs: true`` with what a captured step cannot take, refused before it starts
        (``auto`` leaves the step eager then)."""
        if self.cuda_graphs is not True:
            return
        if self.is_fused:
            raise ValueError(f"cuda_graphs: true is a single trial's; a fused trial (vectorize: {self.vectorize}) "
                             f"captures its members' steps with fused_forward streams")
        blockers = graph_blockers(compile=self.compile, accum_steps=self.accum_steps,
                                  bootstrap_beta=self.bootstrap_beta, distributed=self.workers > 1)
        if blockers:
            key, why = blockers[0]
            raise ValueError(f"{key}: cuda_graphs: true captures each step whole; {why}")

    def _bootstrap_fits(self) -> None:
        """The bootstrapped labels need an epoch to start in and a loss that takes soft targets."""
        if self.bootstrap_beta <= 0:
            return
        if self.bootstrap_start >= self.epochs:
            raise ValueError(f"bootstrap_start: {self.bootstrap_start} is not an epoch of the trial; with "
                             f"bootstrap_beta {self.bootstrap_beta} it must be below epochs ({self.epochs}), 0-based")
        if not loss_class(self.loss).soft_targets:
            raise ValueError(f"bootstrap_beta: loss {self.loss!r} takes class labels only, and the bootstrapped labels "
                             f"are soft targets; use a loss that takes them, or bootstrap_beta 0")

    def _selcl_fits(self) -> None:
        """The student's Sel-CL stage trains on the whole (noisy) training set and the student then on
        its selected examples only; what reads the training set by index elsewhere cannot follow."""
        if self.student_init != "selcl":
            if self.selcl != SelCLConfig() and self.teacher.init != "selcl":
                raise ValueError("selcl: only student_init selcl (or teacher.init selcl, as its default) reads it; "
                                 f"student_init is {self.student_init!r}")
            return
        if self.synthetic.uses(teacher=False):
            raise ValueError("student_init: selcl selects among the real training images; generated ones "
                             "(synthetic.synset_size) are not supported with it")
        if self.augment != "none" and self.teacher_mode != "online" and loss_class(self.loss).needs_teacher:
            raise ValueError(f"teacher_mode: {self.teacher_mode!r} caches the teacher's outputs on fixed views of the "
                             f"whole training set, which student_init selcl cuts to its selected examples; use "
                             f"teacher_mode online (or no augment)")

    @model_validator(mode="before")
    @classmethod
    def _teacher_selcl_default(cls, data: Any) -> Any:
        """A Sel-CL teacher without a recipe of its own takes the student's ``selcl``: the authors run
        both networks' stage 1 with the same arguments."""
        if isinstance(data, dict) and isinstance(data.get("teacher"), dict) and "selcl" in data:
            teacher = data["teacher"]
            if teacher.get("init") == "selcl" and teacher.get("selcl") is None:
                data = {**data, "teacher": {**teacher, "selcl": data["selcl"]}}
        return data

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, value: Any) -> bool | str:
        if isinstance(value, bool) or value in COMPILE_MODES:
            return value
        raise ValueError(f"not a compile mode (accepted: false, true, {', '.join(COMPILE_MODES)})")

    @model_validator(mode="after")
    def _loss_params_fit_loss(self):
        check_loss_params(self.loss, self.loss_params)
        if self.teacher_mode == "sampled_views" and self.augment == "none":
            raise ValueError("teacher_mode sampled_views draws among augmented views; set augment "
                             "(flip_crop or rrc_flip) or use teacher_mode cached")
        if self.teacher_bn == "train" and self.teacher_mode != "online":
            raise ValueError(f"teacher_bn: train runs the teacher's batch norms on each batch, which only an online "
                             f"teacher sees; use teacher_mode online (got {self.teacher_mode!r})")
        if self.augment != "none" and self.teacher_mode != "online" and loss_class(self.loss).needs_features:
            raise ValueError(f"loss {self.loss!r} needs teacher features, which are cached for un-augmented "
                             f"images only; with augment {self.augment!r} use teacher_mode online")
        check_student_init(self.student_init, self.student, self.student_kwargs)
        check_label_noise(self.label_noise, self.dataset, self.dataset_kwargs)
        # A pt teacher keeps its pretrained head as built; a loss that reads its logits needs a trained one.
        if self.teacher.init == "pt" and loss_class(self.loss).needs_teacher:
            problem = predicts_with_untrained_head(self.teacher.pretrained, self.teacher.model_kwargs)
            if problem:
                raise ValueError(f"teacher.model_kwargs.head: loss {self.loss!r} reads the pt teacher's logits; {problem}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        self._per_step_ops_fit()
        self._graphs_fit()
        self._bootstrap_fits()
        self._selcl_fits()
        if self.fewshot is not None:
            check_fewshot(self.fewshot, self.dataset, self.dataset_kwargs, self.loss, self.loss_params)
        self.check_recipe(self.lr, self.epochs, self.schedule, batch_size=self.batch_size)
        if self.is_fused:
            self._fused_fits()
        return self

    def _fused_fits(self) -> None:
        """What a fused trial cannot do, refused before it starts."""
        streams = self.fused_forward == "streams"
        refused = [("fewshot", self.fewshot is not None, "the few-shot stages train one student; drop vectorize"),
                   ("accum_steps", self.accum_steps != 1, "a fused trial takes one micro-batch per step; use 1"),
                   # Named by workers: that is the key a sweep sets per trial (resources.workers, or a
                   # point's workers), where the parse-time check reports it.
                   ("workers", streams and self.workers > 1, f"{self.workers} DDP workers would average gradients "
                    "inside each member's CUDA graph under fused_forward streams; use 1 worker, or fused_forward "
                    "vmap or loop"),
                   ("teacher_bn", self.teacher_bn == "train", "the members share one teacher forward, whose "
                    "batch-norm updates a fused step would replay or duplicate; use teacher_bn eval"),
                   ("student_init", self.student_init == "selcl", "a fused trial's members share one training "
                    "set, and selcl cuts each student's to its own stage's selection; drop vectorize"),
                   ("bootstrap_beta", self.bootstrap_beta > 0, f"fused trials do not support bootstrap_beta "
                    f"{self.bootstrap_beta} (the bootstrapped labels take a second forward of each member on the clean "
                    "images); drop vectorize or set bootstrap_beta 0"),
                   ("compile", streams and self.compile is not False, f"fused_forward streams captures each "
                    f"member's step as a CUDA graph itself; compile {self.compile!r} is not taken with it, set "
                    "compile: false")]
        for key, bad, why in refused:
            if bad:
                raise ValueError(f"{key}: {why} (vectorize: {self.vectorize})")
        members = self.member_params()
        # The members' loss modules are stacked: what sets their shapes is the trial's, not a member's.
        shaped = loss_class(self.loss).member_shape_params
        if shaped:
            values = [validate_loss_params(self.loss, m.loss_params) for m in members]
            for key in shaped:
                seen = sorted({str(getattr(v, key)) for v in values})
                if len(seen) > 1:
                    raise ValueError(f"loss_params.{key}: the members of a fused trial share it (it sets the shape of "
                                     f"{self.loss}'s own parameters); got {', '.join(seen)}. Search it across trials, "
                                     f"not within vectorize")
