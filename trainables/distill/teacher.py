"""Teacher preparation for the ``distill`` trainable: how the teacher gets its weights.

``init`` follows DAPT (Farhat & Chen 2024):

* ``fr``: from scratch, every parameter trained with cross-entropy.
* ``lp``: linear probe. The backbone (``pretrained: true`` or ``checkpoint``) is frozen, its
  features are computed once (backbone in eval mode, so BatchNorm statistics stay the backbone's,
  unlike DAPT's code, which lets them drift in epoch 0) and only the head is trained on them.
* ``ft``: fine-tune everything from the pretrained backbone, the head at ``head_lr_mult`` times
  the body's lr (DAPT: AdamW, body 1e-4, head 1e-3).
* ``pt``: the pretrained backbone with a new, *untrained* head (DAPT's ``pt``; its logits are
  random, so pair it with a feature loss or ``head: pretrained``).
* ``selcl``: Sel-CL's first stage on the (noisy) training labels, from scratch, with the recipe
  in ``teacher.selcl`` (:mod:`trainables.selcl`); the teacher is that stage's classifier, as in the
  noisy-label experiment of "Vision Superalignment". The other optimisation keys are not read.

Optimiser settings left unset take the mode's defaults (:data:`INIT_DEFAULTS`) before the recipe is
hashed, so spelling a default out explicitly names the same cached teacher.
"""
from __future__ import annotations

import json
import os
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from trainables.core.digest import file_digest
from trainables.core.registry import kwargs_validator
from trainables.core.stage_work import stage_dir
from trainables.data import DatasetSplits, load_dataset
from trainables.data.timm_policy import is_timm_config
from trainables.losses import create_loss
from trainables.models import (Classifier, ModelName, check_model_kwargs, create_model, supports_layer_decay,
                               supports_pretrained)
from trainables.models.checkpoint import check_checkpoint_path
from trainables.runtime.engine import evaluate, predict, seed_everything, unwrap
from trainables.runtime.session import LocalSession, default_device
from trainables.runtime.stages import StageSession
from trainables.selcl.config import SelCLConfig
from trainables.selcl.stage import run_stage
from trainables.training.classifier_loop import OptimConfig, train_classifier
from trainables.training.batch_augment import batch_augment_of, geometric_of
from trainables.training.noise_params import with_label_noise
from trainables.training.recipe import RecipeParams
from trainables.training.views import BatchViews, PlainViews, RandomViews

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["cosine", "constant", "step", "multistep"]
TeacherInit = Literal["fr", "lp", "ft", "pt", "selcl"]

INIT_DEFAULTS: dict[str, dict[str, Any]] = {
    # fr keeps this project's long-standing defaults; DAPT's own FR is adamw / 1e-3 / 0.01 / constant.
    "fr": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine", "head_lr_mult": 1.0},
    "lp": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "constant", "head_lr_mult": 1.0},
    "ft": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 5e-4, "schedule": "constant", "head_lr_mult": 10.0},
    "pt": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "constant", "head_lr_mult": 1.0},
}
WEIGHT_KWARGS = ("pretrained", "checkpoint")
SELCL_OWN_KEYS = ("model", "model_kwargs", "init", "selcl")


class TeacherRecipe(RecipeParams):
    """How to make the teacher. Everything here goes into the teacher's cache key."""

    model: ModelName = "cnn"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    init: TeacherInit = "fr"
    pretrained: bool = Field(False, description="backbone from the library's pretrained weights (lp/ft/pt)")
    checkpoint: str | None = Field(None, description="backbone from a weights file (lp/ft/pt)")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer | None = None
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    schedule: Schedule | None = None
    head_lr_mult: float | None = Field(None, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)
    selcl: SelCLConfig | None = Field(None, description="init selcl: Sel-CL's stage-1 recipe (default: the authors')")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: str | None) -> str | None:
        return None if v is None else check_checkpoint_path(v)

    @model_validator(mode="after")
    def _init_mode_fits(self):
        clash = [k for k in WEIGHT_KWARGS if k in self.model_kwargs]
        if clash:
            raise ValueError(f"teacher.model_kwargs.{clash[0]}: set teacher.{clash[0]} (with teacher.init) instead")
        if self.init == "selcl" or self.selcl is not None:
            return self._selcl_fits()
        if self.init == "fr":
            if self.pretrained or self.checkpoint:
                raise ValueError("teacher.init fr trains from scratch; a pretrained or checkpoint backbone needs "
                                 "init lp, ft or pt")
        elif self.pretrained == bool(self.checkpoint):
            raise ValueError(f"teacher.init {self.init} starts from a backbone: set exactly one of "
                             f"teacher.pretrained: true or teacher.checkpoint: PATH")
        elif self.pretrained and not supports_pretrained(self.model):
            raise ValueError(f"teacher.pretrained: model {self.model!r} has no pretrained weights; use a timm:/tv: "
                             f"model or teacher.checkpoint")
        if self.init in ("lp", "pt") and (self.augment != "none" or self.per_step_ops()):
            key = "augment" if self.augment != "none" else self.per_step_ops()[0]
            raise ValueError(f"{key}: teacher.init {self.init} " + (
                "trains only the head, on backbone features computed once from the un-augmented images"
                if self.init == "lp" else "trains nothing") + "; augmentation applies to init fr and ft")
        if self.layer_decay is not None and (self.init in ("lp", "pt") or not supports_layer_decay(self.model)):
            raise ValueError(f"layer_decay: needs teacher.init fr or ft and a timm model (timm:NAME or a "
                             f"timm alias), got init {self.init!r} and model {self.model!r}")
        for key, value in INIT_DEFAULTS[self.init].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"teacher.warmup_epochs ({self.warmup_epochs}) must be below teacher.epochs "
                             f"({self.epochs})")
        self.check_recipe(self.lr, self.epochs, self.schedule, prefix="teacher.", batch_size=self.batch_size)
        return self

    def _selcl_fits(self):
        """Sel-CL trains with its own recipe: the keys of the other modes' recipe would be silently
        unread, so any set away from its default is refused (judged by value, as recipes travel
        as full dumps)."""
        if self.init != "selcl":
            raise ValueError(f"selcl: only init selcl reads it (init is {self.init!r})")
        if self.selcl is None:
            self.selcl = SelCLConfig()
        for name, info in type(self).model_fields.items():
            if name in SELCL_OWN_KEYS:
                continue
            default = info.get_default(call_default_factory=True)
            if getattr(self, name) != default:
                # Named relative to the teacher, as its other checks: the sweep reports it as teacher.<key>.
                raise ValueError(f"{name}: init selcl trains with Sel-CL's recipe (selcl.*) and does not read "
                                 f"{name}; leave it at {default!r}")
        return self

    # After _init_mode_fits, which says where pretrained / checkpoint belong instead.
    _model_kwargs_fit = kwargs_validator("model", "model_kwargs", check_model_kwargs)

    def optim(self) -> OptimConfig:
        return OptimConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           weight_decay=self.weight_decay, schedule=self.schedule, head_lr_mult=self.head_lr_mult,
                           warmup_epochs=self.warmup_epochs, **self.recipe_fields())


def recipe_fields(t: TeacherRecipe) -> dict[str, Any]:
    """The recipe as cache-key fields. A checkpoint enters by content, not only by path."""
    fields = t.model_dump()
    if t.selcl is None:  # added later: without Sel-CL the keys of teachers cached before it stay as they were
        fields.pop("selcl")
    if t.diffaugment == "none":  # added later: off, it leaves the keys of teachers cached before it as they were
        fields.pop("diffaugment"), fields.pop("diffaugment_strategy")
    if not is_timm_config(t.auto_augment):  # added later, and only a timm policy reads it: likewise
        fields.pop("policy_interpolation")
    if t.checkpoint:
        fields["checkpoint_sha256"] = file_digest(t.checkpoint)
    return fields


def create_teacher(t: TeacherRecipe, data: DatasetSplits, with_weights: bool = True) -> Classifier:
    """The teacher architecture with its starting weights (``with_weights``), reading inputs
    normalised as ``data`` is."""
    weights = {"pretrained": t.pretrained, "checkpoint": t.checkpoint} if with_weights and t.init != "fr" else {}
    model = create_model(t.model, num_classes=data.num_classes, input_shape=data.input_shape,
                         **weights, **t.model_kwargs)
    model.adapt_input(data.mean, data.std)
    return model


class _HeadProbe(Classifier):
    """Trains a head on precomputed features."""

    def __init__(self, head: torch.nn.Module, num_features: int):
        super().__init__()
        self.head = head
        self.num_features = num_features

    def forward_features(self, x):
        return x


def linear_probe(model: Classifier, data: DatasetSplits, t: TeacherRecipe, session) -> dict[str, Any]:
    """Train ``model.head`` on the frozen backbone's features of the (un-augmented) splits."""
    feats = {s: predict(model, getattr(data, f"{s}_x"), features=True) for s in ("train", "val", "test")}
    probe_data = DatasetSplits(f"{data.name}-features", feats["train"], data.train_y, feats["val"], data.val_y,
                               feats["test"], data.test_y, data.num_classes, (0.0,), (1.0,))
    probe = _HeadProbe(model.head, model.num_features)
    return train_classifier(model=probe, data=probe_data, loss_fn=create_loss("ce"), session=session, seed=t.seed,
                            optim=t.optim())


def teacher_views(t: TeacherRecipe, data: DatasetSplits, device: torch.device) -> BatchViews:
    """The teacher trains on a fresh geometric view per image per step (its recipe's ``augment``)."""
    geometric = geometric_of(t, data.mean, data.std)
    return RandomViews(geometric, t.seed, device) if geometric.active else PlainViews()


def build_teacher(recipe: dict[str, Any], out_dir: str, device: torch.device | None = None,
                  download: bool = False, data: DatasetSplits | None = None) -> dict[str, Any]:
    """Prepare the teacher per ``recipe["init"]``; write ``model.pt``, ``train_logits.pt`` (the
    teacher's logits on the training split) and ``teacher.json``. ``data``: the splits to train on
    when the training split is not the dataset's own (generated images added)."""
    device = device or default_device()
    t = TeacherRecipe.model_validate({k: v for k, v in recipe.items() if k in TeacherRecipe.model_fields})
    clean_y = None
    if data is None:
        data = load_dataset(recipe["dataset"], seed=recipe["split_seed"], **recipe.get("dataset_kwargs", {}),
                            **({"download": True} if download else {}))
        clean_y = data.train_y
        # The teacher learns from the same noisy training labels as the student; val / test stay clean.
        data, noise_rate = with_label_noise(data, recipe.get("label_noise"), recipe["dataset"],
                                            recipe.get("dataset_kwargs"))
    else:  # the caller's splits (generated images added) carry the noise it applied to the real labels
        noise_rate = data.meta.get("label_noise", {}).get("realised_rate", 0.0)
    data = data.to(device)
    seed_everything(t.selcl.seed if t.init == "selcl" else t.seed)
    model = create_teacher(t, data).to(device)
    session = LocalSession(device)
    selcl_stats = {}
    if t.init == "selcl":
        last = run_stage(model, data, t.selcl, out_dir, clean_y if noise_rate else None,
                         label=f"teacher {t.model} (Sel-CL stage, {recipe['dataset']})")
        final = {"val_acc": last.get("val_acc"), "test_acc": last.get("test_acc"), "train_loss": last["train_loss"]}
        selcl_stats = {"selcl_" + k: last[k] for k in ("selected", "selected_precision", "pair_threshold") if k in last}
    elif t.init in ("fr", "ft"):
        optim = t.optim()
        # Progress lines, and a checkpoint in the cache entry's work folder: an interrupted build resumes
        stage = StageSession(f"teacher {t.model} ({t.init}, {recipe['dataset']})", optim.epochs, device,
                             stage_dir("teacher"))
        final = train_classifier(model=model, data=data, loss_fn=create_loss("ce"), session=stage, seed=t.seed,
                                 optim=optim, views=teacher_views(t, data, device), checkpoint_every=1,
                                 batch_augment=batch_augment_of(t, data.mean, data.std, data.num_classes, t.seed))
        final = final or stage.last  # resumed after its last epoch: nothing left to train
    elif t.init == "lp":
        final = linear_probe(model, data, t, session)
    else:
        final = {"val_acc": evaluate(model, data.val_x, data.val_y, session)["acc"],
                 "test_acc": evaluate(model, data.test_x, data.test_y, session)["acc"], "train_loss": None}
    logits = predict(model, data.train_x).cpu()
    torch.save(logits, os.path.join(out_dir, "train_logits.pt"))
    torch.save(unwrap(model).cpu().state_dict(), os.path.join(out_dir, "model.pt"))
    meta = {"val_acc": final["val_acc"], "test_acc": final["test_acc"], "train_loss": final["train_loss"],
            "model": t.model, "init": t.init, "num_classes": data.num_classes, "logit_dim": int(logits.shape[1]),
            "input_shape": list(data.input_shape),
            "input_norm": [list(v) for v in model.input_norm] if model.input_norm else None,
            **({"label_noise_rate": noise_rate} if recipe.get("label_noise") else {}), **selcl_stats}
    with open(os.path.join(out_dir, "teacher.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_teacher_model(t: TeacherRecipe, entry, data: DatasetSplits, device: torch.device) -> Classifier:
    """The prepared teacher from its cache entry, on ``device``, reading ``data``'s normalisation."""
    # The teacher's random init is overwritten by its weights; keep it off the global RNG so the
    # student initialises identically whether or not a teacher model is built.
    with torch.random.fork_rng(devices=[]):
        model = create_teacher(t, data, with_weights=False)
    model.load_state_dict(torch.load(entry.file("model.pt"), map_location="cpu"))
    norm = entry.meta.get("input_norm")
    model.input_norm = (tuple(norm[0]), tuple(norm[1])) if norm else None
    model.adapt_input(data.mean, data.std)
    return model.to(device)
