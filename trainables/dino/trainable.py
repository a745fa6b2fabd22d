"""``dino``: DINO self-distillation with switchable ingredients, after "Random Teachers are Good
Teachers" (Sarnthein et al., ICML 2023; safelix/dinopl).

A student and a teacher, each an encoder from the model registry followed by a DINO head, see
multi-crop views of unlabelled images; the student learns to match the teacher's centred,
sharpened head outputs with the registered ``dino`` loss (:mod:`trainables.losses.dino`). The
teacher is updated by EMA of the student (``ema``), copied from the student every few epochs
(``prev_epoch``) or never (``no_update``: the random teacher). Every ``probe_every`` epochs the
student's encoder features (not the head's) are probed with a kNN classifier and a linear probe;
the teacher's own features are probed once at the start, so a sweep shows whether distillation
improved on them.

The training loop keeps data and crops on the device and syncs with the host once per epoch
(probes excepted); under DDP (``workers > 1``) the student is wrapped by the session, the teacher
is updated identically on every rank from the synchronised student, and the loss's centres are
all-reduced by the loss itself.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from trainables.core.config import StrictModel
from trainables.data import DatasetSplits, dataset_issues, load_dataset
from trainables.training.dataset_params import DatasetParams, prepare_fixed_dataset
from trainables.runtime.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, predict,
                                       seed_everything, steps_per_epoch, unwrap)
from trainables.training.linear_probe import ProbeSpec, train_probes
from trainables.losses import check_loss_params, create_loss
from trainables.core.registry import kwargs_validator
from trainables.models import ModelName, check_model_kwargs, create_model
from trainables.runtime.epochs import Checkpointed, EpochMeans, run_epochs
from trainables.runtime.trainable import TrialContext, register_trainable
from trainables.runtime.session import Session
from trainables.runtime.vocabulary import Vocabulary


class HeadConfig(StrictModel):
    """DINO head: MLP (Linear [+BN] + activation per hidden layer), then the l2 bottleneck
    Linear(hidden -> bottleneck) -> L2-normalise -> weight-normalised Linear(bottleneck -> out_dim,
    no bias). ``bottleneck_dim`` 0 replaces the bottleneck with a plain Linear(hidden -> out_dim)."""

    hidden_dims: list[int] = Field(default_factory=lambda: [2048, 2048])
    bottleneck_dim: int = Field(256, ge=0)
    out_dim: int = Field(65536, ge=2)
    activation: Literal["gelu", "relu"] = "gelu"
    batch_norm: bool = False
    weight_norm: bool = True
    init: Literal["trunc_normal", "default"] = "trunc_normal"

    @field_validator("hidden_dims")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(d < 1 for d in v):
            raise ValueError("hidden sizes are positive")
        return v


class CropConfig(StrictModel):
    """Multi-crop views, made on the device: per image, a random resized crop (area fraction in
    ``scale``, aspect ratio in 3/4..4/3) resized to ``size`` px (None: the image size), then a
    horizontal flip with probability 0.5 when ``hflip``. The teacher sees the global crops, the
    student all crops. One global crop at scale [1, 1] without flip is the un-augmented image."""

    global_crops: int = Field(2, ge=1)
    global_size: int | None = Field(None, ge=1)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = Field(0, ge=0)
    local_size: int | None = Field(None, ge=1)
    local_scale: tuple[float, float] = (0.05, 0.4)
    hflip: bool = True

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("a crop scale is [min, max] with 0 < min <= max <= 1")
        return v


class DinoParams(DatasetParams):
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
    student_init: Literal["teacher", "random"] = "teacher"
    student_init_seed: int | None = Field(None, ge=0,
                                          description="random student init; None = continue the teacher's stream")
    supervised: bool = Field(False, description="replace the teacher by (noisy) one-hot labels")
    label_noise: float = Field(0.0, ge=0.0, le=1.0)
    logit_noise: float = Field(0.0, ge=0.0)
    label_logit: float = Field(1.0, gt=0.0, description="supervised: the teacher logit of the label class")
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
    probe_every: int = Field(10, ge=1)
    knn_k: int = Field(20, ge=1)
    knn_temperature: float | None = Field(0.07, gt=0, description="None: majority vote")
    probe_epochs: int = Field(20, ge=1)
    probe_lr: float = Field(1e-3, gt=0)
    probe_weight_decay: float = Field(0.0, ge=0)
    probe_batch_size: int = Field(256, ge=1)

    _encoder_kwargs_fit = kwargs_validator("encoder", "encoder_kwargs", check_model_kwargs)

    @model_validator(mode="after")
    def _consistent(self):
        check_loss_params("dino", self.loss_params)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.teacher_momentum_final < self.teacher_momentum:
            raise ValueError("teacher_momentum_final must be at least teacher_momentum")
        return self


# ---------------------------------------------------------------------------------------------- model

class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose rows are used at unit L2 norm: weight normalisation with the
    gain fixed to 1 (DINO's ``norm_last_layer``). The direction is the only parameter, so no gain
    can grow to cancel the normalisation, and EMA / copies of it stay exact."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for hidden in cfg.hidden_dims:
            layers.append(nn.Linear(dim, hidden))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.GELU() if cfg.activation == "gelu" else nn.ReLU())
            dim = hidden
        self.mlp = nn.Sequential(*layers)
        self.bottleneck = nn.Linear(dim, cfg.bottleneck_dim) if cfg.bottleneck_dim > 0 else None
        last_in = cfg.bottleneck_dim if cfg.bottleneck_dim > 0 else dim
        self.last_layer = NormalizedLinear(last_in, cfg.out_dim) if cfg.weight_norm else \
            nn.Linear(last_in, cfg.out_dim, bias=False)
        if cfg.init == "trunc_normal":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        if self.bottleneck is not None:
            x = F.normalize(self.bottleneck(x), dim=-1)
        return self.last_layer(x)


def remove_class_head(encoder: nn.Module) -> None:
    """Make ``encoder(x)`` return its penultimate features: timm models through their own
    ``reset_classifier(0)`` (their wrapper's ``head`` is a view of it), others by an identity head."""
    inner = getattr(encoder, "model", None)
    if inner is not None and hasattr(inner, "reset_classifier"):
        inner.reset_classifier(0)
    else:
        encoder.head = nn.Identity()


class DINOModel(nn.Module):
    """Encoder (a registry classifier with its class head removed) + DINO head."""

    def __init__(self, encoder: nn.Module, head: DINOHead):
        super().__init__()
        remove_class_head(encoder)  # unused otherwise: DDP would wait for its gradients
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """One image batch, or a list of crops of one batch: each run of same-size crops goes
        through the encoder as one batch, the head runs once, and the outputs come back stacked
        crop after crop. One call per step, so DDP sees a single forward before its backward."""
        if isinstance(x, torch.Tensor):
            return self.head(self.encoder(x))
        groups: list[list[torch.Tensor]] = []
        for crop in x:
            if groups and groups[-1][0].shape[-2:] == crop.shape[-2:]:
                groups[-1].append(crop)
            else:
                groups.append([crop])
        return self.head(torch.cat([self.encoder(torch.cat(g)) for g in groups]))


def build_dino_model(p: DinoParams, data: DatasetSplits, init_seed: int | None) -> DINOModel:
    """``init_seed`` None: continue the global generator's stream where it is."""
    if init_seed is not None:
        torch.manual_seed(init_seed)
    encoder = create_model(p.encoder, num_classes=data.num_classes, input_shape=data.input_shape, **p.encoder_kwargs)
    encoder.adapt_input(data.mean, data.std)
    return DINOModel(encoder, DINOHead(encoder.num_features, p.head))


def init_student_teacher(p: DinoParams, data: DatasetSplits) -> tuple[DINOModel, DINOModel]:
    """The teacher from ``teacher_init_seed``; the student a copy of it, or its own random init:
    from ``student_init_seed``, or (None) the next draws of the teacher's stream, as dinopl does,
    so it never repeats the teacher's init by accident of equal seeds."""
    teacher = build_dino_model(p, data, p.teacher_init_seed)
    if p.student_init == "teacher":
        student = copy.deepcopy(teacher)
    else:
        student = build_dino_model(p, data, p.student_init_seed)
    teacher.requires_grad_(False)
    return student, teacher


# ---------------------------------------------------------------------------------------- multi-crop

def random_resized_crops(x: torch.Tensor, size: int, scale: tuple[float, float], hflip: bool) -> torch.Tensor:
    """One random resized crop per image of ``x`` (N, C, H, W), resized to ``size`` x ``size``,
    all in one ``grid_sample`` on ``x``'s device. Crop width and height (as fractions of the image)
    are sqrt(area * ratio) and sqrt(area / ratio), capped at 1; a scale of [1, 1] is the whole image."""
    n = x.shape[0]
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(scale[0], scale[1])
    if scale[0] >= 1.0:
        w = h = torch.ones(n, device=dev)
    else:
        log_ratio = torch.empty(n, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3))
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)  # centres keep the crop inside the image
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    sx = w * (torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0) if hflip else 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def multicrop(x: torch.Tensor, cfg: CropConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(global crops, local crops) of a batch."""
    image = x.shape[-1]
    globals_ = [random_resized_crops(x, cfg.global_size or image, cfg.global_scale, cfg.hflip)
                for _ in range(cfg.global_crops)]
    locals_ = [random_resized_crops(x, cfg.local_size or image, cfg.local_scale, cfg.hflip)
               for _ in range(cfg.local_crops)]
    return globals_, locals_


def forward_crops(model: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """Head outputs per crop, from one model call."""
    return list(model(crops).chunk(len(crops)))


# -------------------------------------------------------------------------------------------- probes

@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, *,
                 k: int, num_classes: int, temperature: float | None = 0.07, block: int = 1024) -> float:
    """kNN classification with cosine similarity: each query votes over its ``k`` most similar
    training points, each vote weighted by exp(similarity / temperature) (DINO's weighted kNN),
    or 1 when ``temperature`` is None (majority vote; ties go to the lower class)."""
    train = F.normalize(train_x.float(), dim=1)
    query = F.normalize(query_x.float(), dim=1)
    k = min(k, len(train))
    correct = torch.zeros((), device=query.device)
    for start in range(0, len(query), block):
        sims, idx = (query[start:start + block] @ train.T).topk(k, dim=1)
        weights = torch.ones_like(sims) if temperature is None else (sims / temperature).exp()
        votes = torch.zeros(len(sims), num_classes, device=query.device)
        votes.scatter_add_(1, train_y[idx].to(query.device), weights)
        correct += (votes.argmax(1) == query_y[start:start + block].to(query.device)).sum()
    return float(correct) / max(len(query), 1)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor,
                          evals: dict[str, tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
                          p: DinoParams) -> dict[str, float]:
    """A softmax-regression probe on standardised features (the vectorised probe code, one probe)."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    views = []
    train_probes((train_x - mean) / std, {"labels": train_y},
                 [ProbeSpec("labels", lr=p.probe_lr, weight_decay=p.probe_weight_decay, epochs=p.probe_epochs)],
                 num_classes=num_classes, batch_size=p.probe_batch_size, seed=p.seed, on_epoch=views.append)
    last = views[-1]
    return {name: float((last.predict((x - mean) / std)[0] == y.to(x.device)).float().mean())
            for name, (x, y) in evals.items()}


def probe_encoder(encoder: nn.Module, data: DatasetSplits, p: DinoParams) -> dict[str, float]:
    """kNN and linear-probe accuracy of ``encoder``'s features: fit on train, scored on val and test."""
    feats = {split: predict(encoder, getattr(data, f"{split}_x"), features=True) for split in ("train", "val", "test")}
    ys = {split: getattr(data, f"{split}_y") for split in ("train", "val", "test")}
    out = {}
    for split, prefix in (("val", ""), ("test", "test_")):
        out[f"{prefix}knn_acc"] = knn_accuracy(feats["train"], ys["train"], feats[split], ys[split], k=p.knn_k,
                                               num_classes=data.num_classes, temperature=p.knn_temperature)
    lin = linear_probe_accuracy(feats["train"], ys["train"], {s: (feats[s], ys[s]) for s in ("val", "test")},
                                num_classes=data.num_classes, p=p)
    out["linear_acc"], out["test_linear_acc"] = lin["val"], lin["test"]
    return out


# ----------------------------------------------------------------------------------- teacher updates

def ema_momentum(p: DinoParams, step: int, total_steps: int) -> float:
    """Cosine from ``teacher_momentum`` at step 0 to ``teacher_momentum_final`` at the last step."""
    progress = step / max(total_steps - 1, 1)
    return p.teacher_momentum_final - (p.teacher_momentum_final - p.teacher_momentum) * \
        (1 + math.cos(math.pi * min(progress, 1.0))) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """θ_t <- m θ_t + (1 - m) θ_s, for parameters (buffers such as BN statistics stay the teacher's)."""
    t_params = list(teacher.parameters())
    torch._foreach_lerp_(t_params, [s.detach() for s in student.parameters()], 1.0 - momentum)


@torch.no_grad()
def copy_student(teacher: nn.Module, student: nn.Module) -> None:
    teacher.load_state_dict(student.state_dict())


def supervised_targets(y: torch.Tensor, out_dim: int, num_classes: int, p: DinoParams) -> torch.Tensor:
    """Teacher outputs for the supervised comparison: ``label_logit`` at the label, 0 elsewhere,
    after replacing a ``label_noise`` fraction of labels by uniform random classes and adding
    Gaussian ``logit_noise``."""
    if p.label_noise > 0:
        flip = torch.rand(len(y), device=y.device) < p.label_noise
        y = torch.where(flip, torch.randint(0, num_classes, y.shape, device=y.device), y)
    logits = F.one_hot(y, out_dim).float() * p.label_logit
    if p.logit_noise > 0:
        logits = logits + p.logit_noise * torch.randn_like(logits)
    return logits


# ------------------------------------------------------------------------------------------- the loop

def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases and norm parameters (DINO)."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_dino(p: DinoParams, data: DatasetSplits, session: Session, checkpoint_every: int = 0) -> dict[str, Any]:
    """Train on ``data`` (already on ``session.device``), reporting every epoch; returns the last metrics."""
    run = DinoRun(p, data, session)
    return run_epochs(session, run.checkpointed(), p.epochs, run.train_epoch, run.epoch_metrics, checkpoint_every)


class DinoRun:
    """The parts of one :func:`train_dino` call: student and teacher (and the teacher's probe, once),
    loss, optimiser and schedule, one training step, one epoch, and the metrics reported after it."""

    def __init__(self, p: DinoParams, data: DatasetSplits, session: Session):
        self.p, self.data, self.session = p, data, session
        self.device = device = session.device
        seed_everything(p.seed)
        student, teacher = init_student_teacher(p, data)
        self.teacher = teacher.to(device)
        self.teacher_probe = {f"teacher_{k}": v for k, v in probe_encoder(teacher.encoder, data, p).items()}
        self.probe = probe_encoder(student.encoder.to(device), data, p)
        self.student = session.prepare_model(student)
        self.loss_fn = create_loss("dino", p.loss_params, out_dim=p.head.out_dim).to(device)
        self.optimizer = build_optimizer(p.optimizer, weight_decay_groups(self.student, p.weight_decay), p.lr,
                                         p.weight_decay, p.momentum, device)
        self.n_train = len(data.train_y)
        per_epoch = steps_per_epoch(self.n_train, p.batch_size, session.world_size, drop_last=True)
        self.total_steps = per_epoch * p.epochs
        self.scheduler = build_scheduler(p.schedule, self.optimizer, self.total_steps, per_epoch * p.warmup_epochs)
        self.last_layer = unwrap(self.student).head.last_layer
        self.progress = {"epoch": 0, "step": 0}

    def checkpointed(self) -> Checkpointed:
        return Checkpointed({"student": unwrap(self.student), "teacher": self.teacher, "loss_fn": self.loss_fn,
                             "optimizer": self.optimizer, "scheduler": self.scheduler},
                            self.progress, records={"probe": self.probe})

    def train_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        p = self.p
        self.student.train()
        self.teacher.train(not p.teacher_eval)
        means = EpochMeans()
        for idx in epoch_batches(self.n_train, p.batch_size, epoch, p.seed, self.session, self.device,
                                 drop_last=True):
            means.add(self.step(epoch, idx))
        if p.teacher_mode == "prev_epoch" and (epoch + 1) % p.teacher_update_every == 0:
            copy_student(self.teacher, unwrap(self.student))
        return means.means()

    def step(self, epoch: int, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.p
        globals_, locals_ = multicrop(self.data.train_x[idx], p.crops)
        with autocast(self.device):  # bf16 on CUDA; the loss computes in fp32
            t_out = self.teacher_outputs(idx, globals_)
            s_out = forward_crops(self.student, globals_ + locals_)
        out = self.loss_fn(s_out, t_out, epoch=epoch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if epoch < p.freeze_last_layer_epochs:
            for param in self.last_layer.parameters():
                param.grad = None
        if p.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), p.clip_grad, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        if p.teacher_mode == "ema":
            ema_update(self.teacher, unwrap(self.student), ema_momentum(p, self.progress["step"], self.total_steps))
        self.progress["step"] += 1
        return out

    def teacher_outputs(self, idx: torch.Tensor, globals_: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the student matches on each global crop: the teacher's head outputs, or (supervised)
        the same noisy one-hot targets for every crop."""
        p = self.p
        if p.supervised:
            target = supervised_targets(self.data.train_y[idx], p.head.out_dim, self.data.num_classes, p)
            return [target] * len(globals_)
        with torch.no_grad():
            return forward_crops(self.teacher, globals_)

    def epoch_metrics(self, epoch: int, train_stats: dict[str, float]) -> dict[str, Any]:
        if epoch + 1 == self.p.epochs or (epoch + 1) % self.p.probe_every == 0:
            self.probe.update(probe_encoder(unwrap(self.student).encoder, self.data, self.p))  # the same keys
        return {"epoch": epoch + 1, **train_stats, "lr": self.optimizer.param_groups[0]["lr"], **self.probe,
                **self.teacher_probe}


def run_dino(p: DinoParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    data = load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs).to(session.device)
    return train_dino(p, data, session, checkpoint_every=ctx.checkpoint_every)


def prepare_dino(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    prepare_fixed_dataset(DinoParams, fixed, searched)
    return None


def check_dino_inputs(p: DinoParams) -> list[tuple[str, str]]:
    return dataset_issues("dataset", p.dataset, **p.dataset_kwargs)


register_trainable(
    "dino",
    params=DinoParams,
    metric="knn_acc",
    mode="max",
    description="DINO self-distillation (ema / prev_epoch / random no_update teacher) with kNN and linear probes.",
    prepare=prepare_dino,
    check_available=check_dino_inputs,
    metrics_doc={
        "knn_acc": "kNN (cosine) accuracy of the student's encoder features on the validation split, at the "
                   "latest probe (every probe_every epochs, the last epoch, and before training)",
        "test_knn_acc": "the same on the test split",
        "linear_acc": "linear-probe accuracy of the student's encoder features on the validation split",
        "test_linear_acc": "the same on the test split",
        "teacher_knn_acc": "kNN accuracy of the teacher's features at the start (the random teacher's own)",
        "teacher_linear_acc": "linear-probe accuracy of the teacher's features at the start",
        "train_loss": "mean DINO loss of the epoch (and train_ce, train_kl, entropies, train_teacher_temp)",
    },
    vocabulary=Vocabulary(
        headline="knn_acc",
        table_metrics=("test_knn_acc", "linear_acc", "test_linear_acc", "teacher_knn_acc"),
        curves=("knn_acc",),
        loss_curves=("train_loss",),
    ),
)(run_dino)
