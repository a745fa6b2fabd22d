"""The ``dino`` family's networks: a registry encoder with its class head removed, followed by a
DINO head, and the student / teacher pair built from them."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import DatasetSplits
from trainables.dino.params import DinoParams, HeadConfig
from trainables.models import create_model
from trainables.models.layers import l2_normalize


class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose rows are used at unit L2 norm: weight normalisation with the
    gain fixed to 1 (DINO's ``norm_last_layer``). The direction is the only parameter, so no gain
    can grow to cancel the normalisation, and EMA / copies of it stay exact."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, l2_normalize(self.weight))


class IdentityHead(nn.Module):
    """No head (``head.kind: identity``): the encoder's features are the output. ``last_layer`` is a
    parameter-free identity, so freezing the last layer is a no-op."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim
        self.last_layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        self.out_dim = cfg.out_dim
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
            nn.Linear(last_in, cfg.out_dim, bias=cfg.last_layer_bias)
        if cfg.init == "trunc_normal":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        if self.bottleneck is not None:
            x = l2_normalize(self.bottleneck(x))
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
    """Encoder (a registry classifier with its class head removed) + DINO head (or none: identity)."""

    def __init__(self, encoder: nn.Module, head: DINOHead | IdentityHead):
        super().__init__()
        remove_class_head(encoder)  # unused otherwise: DDP would wait for its gradients
        self.encoder = encoder
        self.head = head
        self.out_dim = head.out_dim

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
    head = IdentityHead(encoder.num_features) if p.head.kind == "identity" else DINOHead(encoder.num_features, p.head)
    return DINOModel(encoder, head)


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
