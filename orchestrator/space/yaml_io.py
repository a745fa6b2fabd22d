"""A search-space file's YAML: the loader (with exponent floats) and ``--set`` overrides on the
raw mapping."""
from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from orchestrator.errors import SpecError
from trainables.core.config import set_dotted

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
    """``--set key=value`` on the raw YAML mapping; ``value`` is parsed as YAML."""
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
            raw.setdefault("search", {})
            raw["search"][key[len("search."):]] = value
        else:
            set_dotted(raw, key, value)
    return raw

