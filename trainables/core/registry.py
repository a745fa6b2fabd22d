"""One registration contract for trainables, losses, models and datasets, in the style of timm's
``register_model``. Every registry reads the same way::

    @register_loss("kd", params=KDParams)
    class KDLoss(DistillLoss): ...

    @register_model("mlp")
    def mlp(num_classes, input_shape, hidden=(128,), dropout=0.0): ...

    @register_dataset("cifar10", available=..., fetch=...)
    def load_cifar10(seed=0, data_root=None, download=False, val_fraction=0.1): ...

    register_trainable("distill", params=DistillParams, metric="val_acc", ...)(run_distill)

``register_<kind>(name, **options)`` returns a decorator over the entry's object (a class or a
function) and records an :class:`Entry`: the object, its parameters and the registry's options.
A registry's options are the fields of its entry type, so a misspelt option is an error too.

**Parameters are a contract.** An entry either has a pydantic model of its parameters
(``params=``, unknown keys forbidden), or its object's signature is the contract, less what the
framework passes itself (``num_classes``, ``seed``, ...). So an unknown keyword is an error that
names it and the accepted ones (:meth:`Registry.check_kwargs`), raised when the search space is
parsed, before Ray starts (:func:`kwargs_validator` wires it into a trainable's parameters). A
signature with ``**kwargs`` hands them on to something else (timm, torchvision) and must come with
``forwarded=``, which rejects what that library would not accept.

**Prefix providers.** A name ending in ``:`` registers a provider: ``timm:`` makes every
``timm:<arch>`` a model. Its ``names`` option says why an ``<arch>`` is not one (None when it is),
and its object is called with ``<arch>`` first.

Built-in entries are found by scanning their package (:func:`scan`), so a new loss, model or
dataset is one file, with no list to edit.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Generic, Iterable, Mapping, TypeVar

from pydantic import AfterValidator, BaseModel, model_validator

from trainables.core.config import did_you_mean

T = TypeVar("T")
E = TypeVar("E")


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


# ---------------------------------------------------------------------------------- keyword checks


UNKNOWN_KEYWORDS = "has no parameter(s)"  # the phrase of every UnknownKeywords message (validate.py finds it there)


class UnknownKeywords(ValueError):
    """Keywords an entry does not take: ``<what> has no parameter(s) a, b; accepted: c, d``."""

    def __init__(self, what: str, unknown: Iterable[str], accepted: Iterable[str], more: str = ""):
        self.unknown = list(unknown)
        self.accepted = sorted(accepted)
        listed = ", ".join(self.accepted) or "none"
        hint = did_you_mean(self.unknown[0], self.accepted) if len(self.unknown) == 1 else ""
        super().__init__(f"{what} {UNKNOWN_KEYWORDS} {', '.join(self.unknown)}; accepted: {listed}"
                         + (f", {more}" if more else "") + hint)


def signature_keywords(obj: Callable[..., Any], fixed: Iterable[str] = ()) -> tuple[list[str], bool]:
    """The keywords ``obj`` takes, less ``fixed`` (what its caller passes itself), and whether it
    also takes ``**kwargs``."""
    fixed = set(fixed)
    names, var_keyword = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) \
                and p.name not in fixed:
            names.append(p.name)
    return names, var_keyword


def check_keywords(what: str, kwargs: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise :class:`UnknownKeywords` for the keys of ``kwargs`` not in ``accepted``."""
    accepted = list(accepted)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise UnknownKeywords(what, unknown, accepted)


def kwargs_problem(field: str, exc: ValueError) -> ValueError:
    """``exc`` about the keyword arguments held in ``field``, as the project's ``key: problem``
    line: at the first unknown key (``student_kwargs.widht: ...``), else at the field."""
    key = f"{field}.{exc.unknown[0]}" if isinstance(exc, UnknownKeywords) else field
    return ValueError(f"{key}: {exc}")


def kwargs_validator(name_field: str, kwargs_field: str, check: Callable[[str, dict[str, Any]], None]):
    """A pydantic validator for a parameter model: ``kwargs_field`` holds the keyword arguments of
    the entry named by ``name_field``, checked by ``check(name, kwargs)`` (``check_model_kwargs``,
    ``check_dataset`` ...). Assign it in the class body::

        _student_kwargs_fit = kwargs_validator("student", "student_kwargs", check_model_kwargs)
    """

    def validate(self):
        try:
            check(getattr(self, name_field), getattr(self, kwargs_field))
        except ValueError as exc:
            raise kwargs_problem(kwargs_field, exc) from None
        return self

    return model_validator(mode="after")(validate)


# ---------------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One registered name. Registries with options of their own subclass it, one field each."""

    name: str
    obj: Callable[..., Any]
    # A pydantic model of the parameters (unknown keys forbidden); None: obj's signature is the contract.
    params: type[BaseModel] | None = None
    # For a signature with **kwargs, which obj hands on: forwarded(what, kwargs, accepted) raises
    # UnknownKeywords for the handed-on ``kwargs`` the receiver does not take.
    forwarded: Callable[[str, dict[str, Any], list[str]], None] | None = None
    # For a prefix provider (a name ending in ':'): names(rest) says why ``<prefix><rest>`` names
    # none of its entries, or returns None when it does.
    names: Callable[[str], str | None] | None = None

    def resolve(self, name: str) -> "Entry":
        """This provider's entry for ``name``: its ``obj`` and ``forwarded`` take the rest of the
        name first."""
        rest = name[len(self.name):]
        forwarded = functools.partial(self.forwarded, rest) if self.forwarded is not None else None
        return dataclasses.replace(self, name=name, obj=functools.partial(self.obj, rest), forwarded=forwarded,
                                   names=None)


def _record_options(record: Callable[..., Any]) -> tuple[list[str], bool]:
    if dataclasses.is_dataclass(record):
        return [f.name for f in dataclasses.fields(record) if f.init and f.name not in ("name", "obj")], False
    return signature_keywords(record, ("name", "obj"))


class Registry(Generic[E]):
    """Entries register on import of their module; ``loader`` imports the built-in modules the
    first time the registry is read, which keeps ``import trainables.x`` cheap. The modules named
    in ``W2S_PLUGINS`` are imported then too (see :mod:`trainables.core.plugins`).

    ``record(name=..., obj=..., **options)`` makes the entry (:class:`Entry` or a subclass);
    ``fixed`` are the keywords the framework passes to every entry's object itself, which are
    therefore no user parameters; ``interface`` phrases an entry's ``interface`` option in errors
    (``"takes {} inputs"``), for registries whose entries come in kinds."""

    def __init__(self, kind: str, loader: Callable[[], None], *, record: Callable[..., E] = Entry,
                 plural: str | None = None, fixed: Iterable[str] = (), interface: str = "is {}"):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.fixed = tuple(fixed)
        self._record = record
        self._interface = interface
        self._loader = loader
        self._loaded = False
        self._entries: dict[str, E] = {}
        self._providers: dict[str, E] = {}

    # ------------------------------------------------------------------ registration

    def register(self, name: str, **options: Any) -> Callable[[T], T]:
        """``@register_<kind>(name, **options)``: the decorator every registry shares."""
        accepted, open_ = _record_options(self._record)
        if not open_:
            check_keywords(f"register_{self.kind}({name!r})", options, accepted)

        def decorate(obj: T) -> T:
            self._add(name, obj, options)
            return obj

        return decorate

    def _add(self, name: str, obj: Any, options: dict[str, Any]) -> None:
        if name in self._entries or name in self._providers:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        entry = self._record(name=name, obj=obj, **options)
        params = options.get("params")
        if params is not None:
            if not (isinstance(params, type) and issubclass(params, BaseModel)
                    and params.model_config.get("extra") == "forbid"):
                raise TypeError(f"register_{self.kind}({name!r}): params must be a pydantic model that forbids "
                                f"unknown keys (model_config extra='forbid'), got {params!r}")
        elif signature_keywords(obj)[1] and options.get("forwarded") is None:
            raise TypeError(f"register_{self.kind}({name!r}): {getattr(obj, '__name__', obj)} takes **kwargs, so "
                            f"any keyword would pass; list its parameters, or give params= (a pydantic model of "
                            f"them) or forwarded= (what rejects the keywords it hands on)")
        (self._providers if name.endswith(":") else self._entries)[name] = entry

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._loader()
            from trainables.core.plugins import load_plugins

            load_plugins()  # W2S_PLUGINS: user modules that register more entries

    # ------------------------------------------------------------------ lookup

    def names(self, **where: Any) -> list[str]:
        """Registered names (not a provider's), those whose options equal ``where`` if given."""
        self._load()
        return sorted(n for n, e in self._entries.items() if all(getattr(e, k) == v for k, v in where.items()))

    def prefixes(self) -> list[str]:
        self._load()
        return sorted(self._providers)

    def _provider(self, name: str) -> E | None:
        return next((p for prefix, p in self._providers.items() if name.startswith(prefix)), None)

    def _known(self) -> str:
        prefixes = " / ".join(f"{p}<name>" for p in self.prefixes())
        return ", ".join(self.names()) + (f"; or {prefixes}" if prefixes else "")

    def problem(self, name: str) -> str | None:
        """Why ``name`` names no entry (None when it does)."""
        self._load()
        if name in self._entries:
            return None
        provider = self._provider(name)
        if provider is None:
            # a name from a lab's own module is registered only once W2S_PLUGINS imports that module
            return (f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; known {self.plural}: "
                    f"{self._known()} (your own {self.kind}: name its module in W2S_PLUGINS)")
        why = provider.names(name[len(provider.name):]) if provider.names else None
        return f"unknown {self.kind} {name!r}: {why}" if why else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.problem(name) is None

    def get(self, name: str) -> E:
        self._load()
        if name in self._entries:
            return self._entries[name]
        problem = self.problem(name)
        if problem is not None:
            raise KeyError(problem)
        return self._provider(name).resolve(name)

    def check(self, name: str) -> str:
        problem = self.problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    def name_type(self, interface: str | None = None):
        """A pydantic field type: a string that must name an entry (whose ``interface`` option is
        ``interface``, if given)."""

        def check(name: str) -> str:
            got = self.get(self.check(name)).interface
            if got != interface:
                raise ValueError(f"{self.kind} {name!r} {self._interface.format(got)} and cannot be used here; "
                                 f"{interface} {self.plural}: {', '.join(self.names(interface=interface))}")
            return name

        return Annotated[str, AfterValidator(check if interface is not None else self.check)]

    # ------------------------------------------------------------------ parameters

    def accepted(self, name: str) -> list[str]:
        """The keywords entry ``name`` takes from a user (its params model's fields, or its
        signature less :attr:`fixed`); with ``forwarded``, it takes what that lets through too."""
        entry = self.get(name)
        if entry.params is not None:
            return list(entry.params.model_fields)
        return signature_keywords(entry.obj, self.fixed)[0]

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any], extra: Iterable[str] = ()) -> None:
        """Raise :class:`UnknownKeywords` naming the keys of ``kwargs`` that entry ``name`` does not
        take, and the ones it does (plus ``extra``: what the caller itself consumes)."""
        entry = self.get(name)
        accepted = self.accepted(name) + list(extra)
        rest = {k: v for k, v in kwargs.items() if k not in accepted}
        fixed = [k for k in rest if k in self.fixed]  # never handed on: the framework sets them
        if fixed or (rest and entry.forwarded is None):
            raise UnknownKeywords(f"{self.kind} {name!r}", fixed or rest, accepted)
        if rest:
            entry.forwarded(f"{self.kind} {name!r}", rest, accepted)
