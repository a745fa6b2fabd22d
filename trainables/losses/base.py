from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict
from torch import nn


class LossParams(BaseModel):
    """Hyperparameters of one loss; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class LossInputs:
    """Everything a loss may look at for one batch.

    ``targets`` holds int64 class labels (N,) or a probability vector per sample (N, C).
    ``student_features`` / ``teacher_features`` are penultimate (pooled) features, filled in only
    for losses with ``needs_features``. ``indices`` are the samples' positions in the training set.
    ``progress`` is the fraction of training done, in [0, 1], for losses with schedules.
    ``member_columns``: :meth:`DistillLoss.epoch_columns`, computed outside a compiled step (a
    fused trial's, or a single trial's with ``compile``; for a single loss, columns of one). None:
    the loss computes them from ``epoch`` / ``progress`` (see :meth:`DistillLoss.epoch_value`).
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
    member_columns: dict[str, torch.Tensor] | None = None


class DistillLoss(nn.Module):
    """A classifier training objective. ``forward`` returns a dict holding at least ``"loss"``;
    other entries are detached components for logging. Losses with learnable parts (projectors,
    connectors) are modules whose parameters join the student's optimizer; the training loop
    averages their gradients across DDP ranks.

    Losses are built by :func:`trainables.losses.create_loss` with searchable ``params`` and the
    trainable's non-searchable ``context`` (shapes, dataset size, train labels, teacher head)."""

    registry_name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    # The frozen teacher classifier (``context["teacher_head"]``), e.g. for SRRL.
    needs_teacher_head: ClassVar[bool] = False
    # Takes probability targets (N, C) as well as labels (mixup / cutmix produce them).
    soft_targets: ClassVar[bool] = True
    # Implements ``forward_members``: a fused trial computes all its members' losses at once.
    vectorised_members: ClassVar[bool] = False
    # Parameters that set the shapes of the loss's own parameters or state (a projector's width):
    # the members of one fused trial must share them, since their modules are stacked.
    member_shape_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: LossParams, **context: Any):
        super().__init__()
        self.params = params

    def require(self, context: dict[str, Any], key: str) -> Any:
        value = context.get(key)
        if value is None:
            raise ValueError(f"loss {self.registry_name!r} needs {key!r} from the trainable, which did not pass it")
        return value

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def forward_members(cls, losses: list["DistillLoss"], inputs: LossInputs,
                        stacked: "StackedState | None" = None) -> list[dict[str, torch.Tensor]]:
        """The losses of the K members of a fused trial in one computation, for classes that set
        ``vectorised_members`` (the others' members each run ``forward``). ``losses`` are instances
        of this class, each with its own params; ``inputs.student_logits`` (and
        ``student_features``) are stacked (K, N, ...), one row per loss; the rest is shared. Returns
        what each member's ``forward`` would, in order. Worth having because a fused step at a
        small batch is launch-bound on a GPU: K separate loss computations are K times the kernels.

        ``stacked``: for losses with parameters or state (projectors, memory banks), the members'
        parameters and state buffers stacked (K, ...) by name, each member's own tensor a view of
        its row, as the fused trial holds them (``MemberStack`` in trainables/training/fused.py):
        the computation reads them with ``torch.func.functional_call`` under ``vmap``, backward
        fills the stacks' gradients, and in-place updates of a stacked buffer reach every member."""
        raise NotImplementedError(f"loss {cls.registry_name!r} has no vectorised form for fused members")

    @classmethod
    def state_bytes(cls, params: LossParams, num_samples: int, batch_size: int) -> int:
        """Memory one trial's loss holds or allocates per step beyond its parameters (which are
        small, and counted with the student's): per-sample state such as CRD's memory banks. A
        fused trial's parse-time memory check adds it per member. 0 by default."""
        return 0

    @classmethod
    def epoch_columns(cls, losses: list["DistillLoss"], epoch: int, num_epochs: int,
                      device: torch.device) -> dict[str, torch.Tensor]:
        """What the loss needs from the epoch, as (K,) columns: a compiled step (fused, or a single
        trial's with ``compile``) computes them outside its graph and passes them in
        ``LossInputs.member_columns``, so the graph sees tensors, not the epoch (which dynamo would
        guard on, recompiling every epoch until its limit, then running eager). Empty for losses
        without schedules."""
        return {}

    @staticmethod
    def epoch_value(inputs: LossInputs, key: str, eager: Callable[[], float]) -> float | torch.Tensor:
        """A single loss's ``epoch_columns`` value ``key`` for this step: its 0-d entry when the
        step passes the columns (a compiled single trial), else ``eager()``, the Python number
        from ``inputs.epoch`` / ``progress``. Only the branch taken reads the epoch, so a compiled
        forward never guards on it."""
        if inputs.member_columns is not None:
            return inputs.member_columns[key][0]
        return eager()


# The members' parameters and buffers of a fused trial's loss modules, stacked (K, ...) by name.
StackedState = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def members_call(module: nn.Module, stacked: StackedState, prefix: str, x: torch.Tensor,
                 batched: bool = True) -> torch.Tensor:
    """Each member's copy of ``module`` (the submodule at ``prefix`` of a loss, e.g. a projector)
    applied to its input, as one vmapped call over the stacked parameters: x is (K, N, ...) when
    ``batched``, one (N, ...) shared by the members otherwise; returns (K, N, ...)."""
    from torch.func import functional_call, vmap

    params, buffers = stacked
    start = len(prefix) + 1
    own = ({n[start:]: t for n, t in params.items() if n.startswith(prefix + ".")},
           {n[start:]: t for n, t in buffers.items() if n.startswith(prefix + ".")})
    return vmap(lambda p, b, v: functional_call(module, (p, b), (v,)), in_dims=(0, 0, 0 if batched else None),
                randomness="different")(*own, x)


def member_rows(**columns: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """What ``forward_members`` returns: member i's statistics, row i of each (K,) column.

    Rows come from ``unbind``: one autograd node for all K, whose backward stacks the K rows'
    gradients in one kernel. Indexing ``loss[i]`` made K nodes, each zero-filling a (K,)
    gradient and writing its row: 2K small kernels per fused step."""
    rows = {key: col.unbind(0) for key, col in columns.items()}
    return [{key: r[i] for key, r in rows.items()} for i in range(len(next(iter(rows.values()))))]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against hard labels (N,) or probability targets (N, C)."""
    return nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices from int labels (N,) or probability targets (N, C) (their argmax)."""
    return targets if targets.dim() == 1 else targets.argmax(dim=-1)


def self_training_ce_per_sample(student_logits: torch.Tensor) -> torch.Tensor:
    """CE(z_s, argmax z_s) per sample: the student against its own top-1 (argmax carries no
    gradient; the gradient sharpens the student toward its current prediction)."""
    return -torch.log_softmax(student_logits.float(), dim=-1).max(dim=-1).values


def member_column(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """One hyperparameter of K fused members as a (K,) float32 tensor on ``device``. Cached in
    eager mode: the host-to-device copy happens once per member set, not every step. Inside a
    compiled step (``compile`` on a fused trial) the values become a constant of the graph, and
    the cache is bypassed (dynamo would trace through it anyway, with a warning)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=torch.float32, device=device)
    return _cached_column(values, device)


@functools.lru_cache(maxsize=256)
def _cached_column(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).to(device)


def scalar_like(reference: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """A 0-d tensor on ``reference``'s device for logging a Python number (or a 0-d tensor, such
    as an :meth:`DistillLoss.epoch_value`, detached). A fill kernel, not a host-to-device copy
    (which from pageable memory would wait for the GPU stream every step)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.full((), value, device=reference.device)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over DDP ranks; itself when not distributed."""
    if not distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over DDP ranks (a new tensor); itself when not distributed."""
    if not distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
