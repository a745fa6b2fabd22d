"""Loading weights from files: ``.pt``/``.pth`` (a raw state dict, or one under ``model``,
``state_dict`` or ``module``) and ``.safetensors``."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from trainables.core.paths import REPO_ROOT
from trainables.models.base import head_state_keys

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")




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


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> list[str]:
    """Load ``state`` into ``model``; returns the head keys left at their fresh initialisation.

    Keys may be the model's own or, for hub models, the library's native names. The classifier
    head is taken only when its shape fits (a checkpoint trained on another label space keeps the
    model's fresh head); every other tensor must be present and fit.
    """
    own = model.state_dict()
    if not set(state) & set(own) and hasattr(model, "native_state_dict"):
        state = model.native_state_dict(state)
    head_keys = head_state_keys(model)
    fresh_head = [k for k in head_keys if k not in state or state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in fresh_head}
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                 if keys]
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return fresh_head


def load_checkpoint(model: nn.Module, path: str) -> list[str]:
    return load_weights(model, read_state_dict(path), source=f"checkpoint {path}")
