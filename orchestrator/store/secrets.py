"""Keep credentials out of MLflow.

Everything the sweep sends to MLflow as parameters, tags or logged dicts passes through here.
A key whose last dotted component looks like a credential (``*_KEY``, ``*_TOKEN``, ``*SECRET*``,
``*PASSWORD*``, ``*CREDENTIAL*``, case-insensitive) is dropped, with its value, wherever it is
nested. The environment is never logged wholesale: nothing in the sweep logs ``os.environ``, and the
search-space text is logged with such keys' values blanked.
"""
from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"(^|_)(key|token)$|secret|passw(or)?d|credential|^auth$|api_?key", re.I)
# `key: value` in YAML (block or flow style) whose key looks like a credential.
_YAML_PAIR = re.compile(r"(?P<key>[A-Za-z0-9_.\-]+)(?P<sep>[ \t]*:[ \t]+)(?P<value>[^,{}\[\]\n#]+)")


def is_secret_key(key: str) -> bool:
    """True for names such as ``AWS_SECRET_ACCESS_KEY``, ``hf_token``, ``db.password``, ``api_key``."""
    last = str(key).rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    return bool(_SECRET_NAME.search(last))


def filter_params(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(params without credential-like keys, the dropped keys)."""
    kept, dropped = {}, []
    for key, value in params.items():
        if is_secret_key(key):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with credential-like keys removed."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items() if not is_secret_key(str(k))}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_yaml_text(text: str) -> str:
    """Blank the values of credential-like keys in YAML text (best effort, line by line)."""

    def blank(m: re.Match) -> str:
        if not is_secret_key(m.group("key")):
            return m.group(0)
        value = m.group("value")
        trail = value[len(value.rstrip()):]
        return f"{m.group('key')}{m.group('sep')}{REDACTED}{trail}"

    return _YAML_PAIR.sub(blank, text)
