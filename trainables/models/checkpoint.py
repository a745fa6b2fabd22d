"""Loading weights from files: ``.pt``/``.pth`` (a raw state dict, or one under ``model``,
``state_dict`` or ``module``) and ``.safetensors``."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from trainables.core.paths import REPO_ROOT
from trainables.models.base import KeyNaming, head_state_keys

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")
_BN_COUNTER = "num_batches_tracked"
_SHOWN_KEYS = 5


def resolve_checkpoint_path(path: str) -> str:
    """An absolute path: a relative one is looked up in the working directory, then in the
    repository root (shipped assets such as ``search_spaces/assets/``). Trials run in their own
    working directory, so the path the driver validated must not depend on it."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    for base in (os.getcwd(), REPO_ROOT):
        candidate = os.path.join(base, path)
        if os.path.isfile(candidate):
            return candidate
    return os.path.abspath(path)


def check_checkpoint_path(path: str) -> str:
    """Validation-time check: an existing file with a known suffix; returns its absolute path."""
    if not path.endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(f"checkpoint {path!r} must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
    resolved = resolve_checkpoint_path(path)
    if not os.path.isfile(resolved):
        raise ValueError(f"checkpoint file {path!r} does not exist")
    return resolved


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    path = resolve_checkpoint_path(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - training checkpoints often pickle their args; trust the user's file
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (or one under {', '.join(_WRAPPER_KEYS)})")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP-wrapped model
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _unmatched(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], naming: KeyNaming | None) -> list[str]:
    """The keys of ``state`` that ``naming`` (None: ours) does not turn into a key of ``own``."""
    if naming is None:
        return [k for k in state if k not in own]
    return [k for k in state if naming.rename(k) not in own]


def _in_own_naming(model: nn.Module, state: dict[str, torch.Tensor],
                   own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None, str]:
    """``state`` in the model's own key names, the name of the foreign naming it came in (None:
    ours), and, when the model has foreign namings and none fits, what was tried: the model's
    registered name, each naming and the first keys it could not place. A naming is recognised by
    key set: every key must become one of the model's (shapes are checked afterwards)."""
    namings: tuple[KeyNaming, ...] = getattr(model, "foreign_namings", ())
    unmatched = _unmatched(state, own, None)
    if not unmatched or not namings:
        return state, None, ""  # ours, or ours with faults the missing/unexpected checks describe
    tried = [("ours", unmatched)]
    for naming in namings:
        keys = _unmatched(state, own, naming)
        if not keys:
            return {naming.rename(k): v for k, v in state.items()}, naming.name, ""
        tried.append((naming.name, keys))
    name = getattr(model, "registry_name", None) or type(model).__name__
    lines = "; ".join(f"{label}: {len(keys)} unmatched, first {', '.join(keys[:_SHOWN_KEYS])}"
                      for label, keys in tried)
    return state, None, (f"its keys match no known naming of model {name!r} "
                         f"(tried {', '.join(label for label, _ in tried)}) — {lines}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> list[str]:
    """Load ``state`` into ``model``; returns the head keys left at their fresh initialisation.

    Keys may be the model's own or, for hub models, the library's native names, or those of a
    ``foreign_namings`` entry of the model (the authors' CIFAR zoo: RepDistiller/mdistiller),
    recognised by key set. The classifier head is taken only when its shape fits (a checkpoint
    trained on another label space keeps the model's fresh head); every other tensor must be
    present and fit (BatchNorm's ``num_batches_tracked`` may be absent).
    """
    own = model.state_dict()
    if not set(state) & set(own) and hasattr(model, "native_state_dict"):
        state = model.native_state_dict(state)
    state, naming, tried = _in_own_naming(model, state, own)
    if naming is not None:
        source = f"{source} ({naming} key names)"
    head_keys = head_state_keys(model)
    fresh_head = [k for k in head_keys if k not in state or state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in fresh_head}
    # BatchNorm's step counter is unused at the default momentum, and older files lack it.
    missing = [k for k in own if k not in state and k not in head_keys and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                 if keys]
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts)
                         + (f"; {tried}" if tried else ""))
    model.load_state_dict(state, strict=False)
    return fresh_head


def load_checkpoint(model: nn.Module, path: str) -> list[str]:
    return load_weights(model, read_state_dict(path), source=f"checkpoint {path}")
