"""A small name -> factory registry shared by datasets, models, losses and trainables."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Callable, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


def scan(package: str, module: str | None = None) -> Callable[[], None]:
    """A loader that imports the built-ins of ``package`` by scanning it, so adding an entry is
    adding a file, with no list to edit: every submodule (``module`` None), or the ``module`` of
    every sub-package that has one (``scan("trainables", "trainable")`` imports
    ``trainables.distill.trainable``, ...). Names starting with ``_`` are skipped."""

    def load() -> None:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            if module is None:
                importlib.import_module(f"{package}.{info.name}")
            elif info.ispkg and importlib.util.find_spec(f"{package}.{info.name}.{module}") is not None:
                importlib.import_module(f"{package}.{info.name}.{module}")

    return load


class Registry(Generic[T]):
    """Entries register on import of their module; ``loader`` imports the built-in modules the
    first time the registry is read, which keeps ``import trainables.x`` cheap. The modules named
    in ``W2S_PLUGINS`` are imported then too (see :mod:`trainables.core.plugins`)."""

    def __init__(self, kind: str, loader: Callable[[], None], plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._loader = loader
        self._loaded = False
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.register(name, entry)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._loader()
            from trainables.core.plugins import load_plugins

            load_plugins()  # W2S_PLUGINS: user modules that register more entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return self._entries[name]

    def check(self, name: str) -> str:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return name

    def name_type(self):
        """A pydantic field type: a string that must name a registered entry."""
        return Annotated[str, AfterValidator(self.check)]
