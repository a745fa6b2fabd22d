"""A search-space file's YAML: the loader (with exponent floats) and ``--set`` overrides on the
raw mapping."""
from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from orchestrator.errors import SpecError
from trainables.core.config import get_dotted, set_dotted

DOTTED_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # params.epochs, loss_params.temperature


# PyYAML follows YAML 1.1, where ``1e-3`` is a *string*. Researchers write it everywhere, so
# resolve exponent floats without a dot as floats too.
class _SpecLoader(yaml.SafeLoader):
    pass


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key written twice in one mapping: YAML would silently keep the last one."""


def _unique_mapping(loader: _SpecLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # ``<<: *base`` merges are YAML's own way to override keys
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise DuplicateKey(None, None, f"key {key!r} is written twice (lines {lines[key]} and {line}); YAML "
                               "would keep only the last, so keep one", key_node.start_mark)
        lines[key] = line
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, file: str | None = None) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, DuplicateKey):
            raise SpecError.single(file, "", problem) from None
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError.single(file, "", f"not valid YAML: {where}{problem}") from None


def parse_mapping(text: str, file: str | None = None) -> dict[str, Any]:
    """The file's top-level mapping; an empty file or another top-level type is an error."""
    raw = parse_yaml(text, file)
    if raw is None:
        raise SpecError.single(file, "", "the file is empty")
    if not isinstance(raw, dict):
        raise SpecError.single(file, "", "the top level must be a mapping of keys", type(raw).__name__)
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str | None) -> dict[str, Any]:
    """``--set key=value`` on the raw YAML mapping; ``value`` is parsed as YAML.

    A key is either searched or fixed, and the command line is the user's latest word, so a ``--set``
    moves a key between the two rather than failing on the file: ``--set params.lr=0.1`` fixes a
    ``lr`` the file searches (its ``search`` entry, and any ``points_to_evaluate`` value for it, go),
    ``--set search.lr={...}`` searches a ``lr`` the file fixes, and ``--set search.lr=null`` stops
    searching it (and points stop setting it: the trainable's default applies). A file that both fixes
    and searches a key is still an error: that is the file's own contradiction."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError.single(file, "--set", "expects key=value", item)
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or not DOTTED_KEY.fullmatch(key):
            raise SpecError.single(file, "--set", "the key must be a dotted path such as params.epochs", item)
        value = parse_yaml(text, file) if text.strip() else None
        if key.startswith("search."):
            # A searched key holds one dotted parameter name; do not split it into nested dicts.
            name = key[len("search."):]
            if not isinstance(raw.get("search"), dict):
                raw["search"] = {}
            if value is None:
                # no longer varied: no point may set it either (validate refuses a point's key
                # that is neither searched nor fixed)
                for holder in [raw["search"], *_points(raw)]:
                    holder.pop(name, None)
            else:
                raw["search"][name] = value
                _unfix(raw, name)
        else:
            set_dotted(raw, key, value)
            if key.startswith("params."):
                _unsearch(raw, key[len("params."):])
    return raw


def _unsearch(raw: dict[str, Any], name: str) -> None:
    """After ``--set params.<name>``: the parameters it now fixes (``name`` or keys under it, as
    ``loss_params={temperature: 2}`` fixes ``loss_params.temperature``) leave ``search`` and the
    explicit points, so that every trial runs with the value given."""
    params = raw.get("params")

    def fixed_here(k: object) -> bool:
        return (k == name or str(k).startswith(name + ".")) and get_dotted(params, str(k)) is not None

    if isinstance(params, dict):
        for holder in [raw.get("search"), *_points(raw)]:
            if isinstance(holder, dict):
                for k in [k for k in holder if fixed_here(k)]:
                    del holder[k]


def _points(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The explicit points that are mappings (a malformed list is the schema's to report)."""
    points = raw.get("points_to_evaluate")
    return [p for p in points if isinstance(p, dict)] if isinstance(points, list) else []


def _unfix(raw: dict[str, Any], name: str) -> None:
    """After ``--set search.<name>``: a value the file fixed for it under ``params`` goes."""
    *parents, leaf = name.split(".")
    node = raw.get("params")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)
