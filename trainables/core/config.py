"""Config helpers every layer shares: the strict pydantic base, dotted keys, and pydantic errors
turned into the project's one-line ``key: problem`` form."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

MISSING = object()  # "no value to show" in an error, as opposed to a value that is None


class StrictModel(BaseModel):
    """A parameter model that refuses unknown keys (a misspelt key is an error, never ignored) and
    non-finite floats (a NaN learning rate would otherwise be reported as out of range, or pass a
    check that NaN compares false against). Loss parameters, where NaN can mean "off", have their
    own base."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """``cfg['a']['b'] = value`` for ``a.b``, creating (or replacing non-mapping) parents."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def get_dotted(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def loc_to_key(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the dotted key a user wrote: ``('a', 0, 'b')`` -> ``a[0].b``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Problem:
    """One pydantic error in user terms: the dotted key, what is wrong, the offending value."""

    key: str
    message: str
    value: Any = MISSING
    kind: str = ""  # pydantic's error type (extra_forbidden, missing, ...)


def problems(exc: ValidationError, prefix: str = "") -> list[Problem]:
    """Every error of ``exc``, keys prefixed with ``prefix``; unknown and missing keys get the
    project's wording ("unknown key", "is required")."""
    out = []
    for err in exc.errors():
        loc = loc_to_key(tuple(err["loc"]))
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            out.append(Problem(key, "unknown key", kind=err["type"]))
        elif err["type"] == "missing":
            out.append(Problem(key, "is required", kind=err["type"]))
        elif err["type"] in _BOUNDS and _is_nan(err.get("input")):
            # NaN compares false against every bound: "must be <= 10 (got nan)" would mislead.
            out.append(Problem(key, "input should be a finite number", err.get("input"), err["type"]))
        else:
            out.append(Problem(key, msg[:1].lower() + msg[1:], err.get("input", MISSING), err["type"]))
    return out


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def first_problem(exc: ValidationError, prefix: str = "") -> str:
    """The first error of ``exc`` as one line, ``key: problem``: for a validator that re-raises a
    nested model's error as its own ValueError."""
    p = problems(exc, prefix)[0]
    return f"{p.key}: {p.message}" if p.key else p.message


# A value given as ``${env:NAME}`` is read from the trial process's environment when the trial
# builds its parameters: credentials stay out of the search space, the sweep folder, Tune's trial
# configs and MLflow (the placeholder is what they hold).
ENV_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")


def env_ref(value: Any) -> str | None:
    """The variable a ``${env:NAME}`` value names, else None."""
    match = ENV_REF.match(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def resolve_env_refs(obj: Any, environ: Mapping[str, str] | None = None, key: str = "") -> Any:
    """``obj`` with every ``${env:NAME}`` value replaced by the variable's value; a variable that is
    not set is an error naming the key and the variable."""
    environ = os.environ if environ is None else environ
    if isinstance(obj, dict):
        return {k: resolve_env_refs(v, environ, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_env_refs(v, environ, f"{key}[{i}]") for i, v in enumerate(obj)]
    name = env_ref(obj)
    if name is None:
        return obj
    if name not in environ:
        raise ValueError(f"{key}: ${{env:{name}}} names an environment variable that is not set where the trial "
                         f"runs; set {name} (on every node of a cluster)")
    return environ[name]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelt ``name``, else ``""``.
    difflib's ratio, cut at 0.6: close enough for a typo (``studnet``), not for a different word."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fields_at(model: type[BaseModel], dotted: str) -> list[str]:
    """The field names of the (nested) model that holds key ``dotted`` of ``model``: where a
    misspelt key's neighbours are. [] when the path leaves the models (a free-form mapping)."""
    import typing

    *parents, _ = dotted.split(".")
    current: Any = model
    for part in parents:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]  # X, or X | None
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []
