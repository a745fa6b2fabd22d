"""User plugins: extra trainables, losses, models and datasets without editing the package.

``W2S_PLUGINS`` names importable modules, comma-separated (``W2S_PLUGINS=mylab.losses,mylab.data``).
Each registry imports them, after its built-in entries, the first time it is read, so a plugin's
``register_loss`` / ``register_trainable`` / ``register_model`` / ``register_dataset`` calls run
in the sweep driver and in every Ray worker alike (the driver forwards the variable to workers).
"""
from __future__ import annotations

import importlib
import os

PLUGINS_ENV = "W2S_PLUGINS"

_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def load_plugins() -> None:
    """Import every module named in ``W2S_PLUGINS`` once. A module that cannot be imported is a
    user error named with the variable, not a traceback from deep inside a registry."""
    for module in plugin_modules():
        if module in _loaded:
            continue
        _loaded.add(module)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            _loaded.discard(module)
            raise PluginError(f"{PLUGINS_ENV}: cannot import plugin module {module!r} ({exc}); it must be "
                              "importable from the working directory or PYTHONPATH on every node") from None


class PluginError(ImportError):
    pass
