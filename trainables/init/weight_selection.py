"""Weight selection (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): initialise a
model from a larger one of the same family by copying a subset of its weights.

1. **Layer selection, first-N by name.** Every student tensor takes the teacher tensor with the
   same state-dict key, so student block *i* takes teacher block *i* and surplus teacher blocks
   are dropped (ConvNeXt-T 3/3/9/3 -> ConvNeXt-F 2/2/6/2 takes the first blocks of each stage).
2. **Element selection** along every dimension where the teacher is larger:
   ``uniform`` (the paper's default) keeps indices ``0, s, 2s, …`` with ``s = D / d`` when ``d``
   divides ``D``, else ``round(linspace(0, D - 1, d))``; ``consecutive`` keeps the first ``d``;
   ``random`` keeps a seeded random sorted subset.
3. **Consistency.** Index sets are drawn once per *logical dimension*, identified by its
   ``(teacher size, student size)`` pair, and reused by every tensor that has that dimension. The
   residual width (ViT embed dim 384 -> 192), the MLP width, BN/LayerNorm vectors, positional and
   CLS embeddings therefore stay aligned under every method (uniform and consecutive are
   consistent by construction; ``random`` needs it). Stacked projections (a ViT's ``qkv``) are
   split into their blocks and each block is selected with the per-block index set, so q, k and v
   stay separate.
4. **The head is skipped** (keys containing ``head`` by default, which for timm's ConvNeXt also
   skips the final ``head.norm``, as in the reference): the label space differs.
"""
from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import nn

SelectionMethod = Literal["uniform", "consecutive", "random"]
METHODS = ("uniform", "consecutive", "random")
# Keys whose dimension 0 stacks equal blocks (timm ViT ``attn.qkv`` = [q; k; v]).
STACKED_DIM0 = {".qkv.": 3}


def uniform_indices(big: int, small: int) -> torch.Tensor:
    if big % small == 0:
        return torch.arange(0, big, big // small)
    return torch.linspace(0, big - 1, small).round().long()


class IndexSets:
    """One index set per logical dimension ``(teacher size, student size)``."""

    def __init__(self, method: SelectionMethod = "uniform", seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"weight selection method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        self.generator = torch.Generator().manual_seed(seed)
        self.sets: dict[tuple[int, int], torch.Tensor] = {}

    def get(self, big: int, small: int) -> torch.Tensor:
        if (big, small) not in self.sets:
            if self.method == "uniform":
                idx = uniform_indices(big, small)
            elif self.method == "consecutive":
                idx = torch.arange(small)
            else:
                idx = torch.randperm(big, generator=self.generator)[:small].sort().values
            self.sets[(big, small)] = idx
        return self.sets[(big, small)]


def select_tensor(teacher: torch.Tensor, shape: tuple[int, ...], sets: IndexSets, blocks_dim0: int = 1,
                  key: str = "tensor") -> torch.Tensor:
    """The sub-tensor of ``teacher`` of the student's ``shape``."""
    if teacher.dim() != len(shape):
        raise ValueError(f"{key}: teacher tensor has rank {teacher.dim()} {tuple(teacher.shape)}, "
                         f"student rank {len(shape)} {tuple(shape)}")
    out = teacher
    for dim, (big, small) in enumerate(zip(teacher.shape, shape)):
        if big < small:
            raise ValueError(f"{key}: teacher is smaller than the student along dim {dim} "
                             f"({tuple(teacher.shape)} vs {tuple(shape)}); weight selection needs a larger teacher")
        if big == small:
            continue
        blocks = blocks_dim0 if dim == 0 and big % blocks_dim0 == 0 and small % blocks_dim0 == 0 else 1
        per_block = sets.get(big // blocks, small // blocks)
        idx = torch.cat([per_block + b * (big // blocks) for b in range(blocks)])
        out = out.index_select(dim, idx.to(out.device))
    return out


def select_weights(student_state: Mapping[str, torch.Tensor], teacher_state: Mapping[str, torch.Tensor],
                   method: SelectionMethod = "uniform", seed: int = 0,
                   skip: tuple[str, ...] = ("head",)) -> dict[str, torch.Tensor]:
    """A state dict for the student, selected from the teacher's; keys containing any ``skip``
    substring are left out (the caller keeps the student's own initialisation for them)."""
    sets = IndexSets(method, seed)
    selected: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, target in student_state.items():
        if any(s in key for s in skip):
            continue
        if key not in teacher_state:
            missing.append(key)
            continue
        blocks = next((n for pattern, n in STACKED_DIM0.items() if pattern in key), 1)
        tensor = select_tensor(teacher_state[key], tuple(target.shape), sets, blocks, key)
        selected[key] = tensor.to(dtype=target.dtype).clone()
    if missing:
        raise ValueError(f"weight selection: {len(missing)} student tensors have no same-named teacher tensor "
                         f"(is the source the same model family?): {', '.join(missing[:6])}"
                         f"{' …' if len(missing) > 6 else ''}")
    return selected


def apply_weight_selection(student: nn.Module, teacher_state: Mapping[str, torch.Tensor],
                           method: SelectionMethod = "uniform", seed: int = 0,
                           skip: tuple[str, ...] = ("head",)) -> list[str]:
    """Overwrite ``student``'s weights with the selection; returns the keys left as initialised."""
    state = student.state_dict()
    selected = select_weights(state, teacher_state, method, seed, skip)
    student.load_state_dict(selected, strict=False)
    return [k for k in state if k not in selected]
