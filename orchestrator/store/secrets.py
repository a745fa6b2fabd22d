"""Keep credentials out of MLflow, the sweep's report files and its printed output.

One matcher, :func:`is_secret_key`, decides what a credential is, and every writer uses it:

* MLflow params, tags and metric names with such a name are dropped (``RedactingClient`` in
  :mod:`orchestrator.store.tracking` wraps every write, whoever the caller is); logged dicts
  are redacted, logged YAML text has such keys' values blanked;
* report files, in the sweep folder and on the parent run (``best_config.json``,
  ``best_config.yaml``, ``results.*``, ``summary.*``, ``comparison.csv``) pass through
  :func:`redact_artifact`, which blanks such keys' values (``[redacted]``);
* URIs with a password (``postgresql://user:s3cret@host/db``) are shown as
  ``postgresql://user:***@host/db`` wherever the sweep prints or logs one (:func:`mask_uri`,
  :func:`mask_uris_in_text`).

A key is split into words on ``.``, ``_``, ``-``, ``/``, spaces and camelCase (``apiToken`` ->
``api token``, ``HFToken`` -> ``hf token``); it is a credential when a word is one of
:data:`SECRET_WORDS` (token, secret, password, passwd, pwd, credential(s), auth, ...), contains
one of :data:`SECRET_PARTS` (``mysecret``, ``dbpassword``), is ``apikey``, or when a word ``key``
(``keys``) follows another word of the same dotted part (``api_key``, ``private_key_pem``,
``hfKey``). A dotted part that is only ``key`` (``rows.key``: a nested ``{key: ...}`` is judged
the same way), or words that merely contain these letters (``tokenizer``, ``monkey``, ``author``,
``keep``), are not credentials.

The environment is never logged wholesale: nothing in the sweep logs ``os.environ``.
"""
from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"
MASK = "***"

# Whole words that make a key a credential.
SECRET_WORDS = frozenset({
    "token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase",
    "credential", "credentials", "creds", "auth", "authorization", "bearer", "apikey", "apikeys",
    "privatekey", "cookie",
})
# Letters that make any word containing them a credential (no harmless word contains them).
SECRET_PARTS = ("secret", "password", "passwd", "credential")
# A word ``key``/``keys`` after another word of the same dotted part: ``api_key``, ``private_key_pem``, ``hfKey``.
KEY_WORDS = frozenset({"key", "keys"})

_SPLIT = re.compile(r"[^A-Za-z0-9]+")
# camelCase and acronyms: "HFToken" -> HF, Token; "apiToken2" -> api, Token, 2.
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: ``"student_kwargs.apiToken"`` -> ``[student, kwargs, api, token]``."""
    words: list[str] = []
    for chunk in _SPLIT.split(str(key)):
        words += [w.lower() for w in _CAMEL.findall(chunk)]
    return words


def is_secret_key(key: str) -> bool:
    """True for names such as ``AWS_SECRET_ACCESS_KEY``, ``hf-token``, ``apiToken``, ``db.password``,
    ``private_key_pem``, ``pwd``, ``auth_header``, ``api_key``; false for ``tokenizer``, ``monkey``,
    ``checkpoint.keep``, ``key``."""
    for part in str(key).split("."):
        words = key_words(part)
        for i, word in enumerate(words):
            if word in SECRET_WORDS or any(secret in word for secret in SECRET_PARTS):
                return True
            # `key` after another word of the same dotted part: `api_key`, `hfKey`; not `rows.key`,
            # so that a nested {ssh: {key: ...}} and its flattened `ssh.key` are judged alike.
            if word in KEY_WORDS and i > 0:
                return True
    return False


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
    """A copy of a nested dict/list with credential-like keys removed (what MLflow gets)."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items() if not is_secret_key(str(k))}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return mask_uris_in_text(obj) if isinstance(obj, str) else obj


def blank(obj: Any) -> Any:
    """A copy of a nested dict/list with credential-like keys' values replaced by ``[redacted]``
    (what report files get: the key stays, so a re-run says what to fill in)."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_key(str(k)) else blank(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [blank(v) for v in obj]
    return mask_uris_in_text(obj) if isinstance(obj, str) else obj


# `key:` in YAML (block or flow style, the key quoted or not) and `"key":` in JSON-like text.
_YAML_KEY = re.compile(r"""(?P<q>["']?)(?P<key>[A-Za-z0-9_.\-/]+)(?P=q)[ \t]*:(?=[ \t]|$)""")
_QUOTED = re.compile(r"'(?:[^'\n]|'')*'" + r'|"(?:[^"\\\n]|\\.)*"')
_PLAIN = re.compile(r"[^,{}\[\]\n#]*")
_ENV_REF = re.compile(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*\}")  # a ${env:NAME} value, braces and all
_BLANKED = f"'{REDACTED}'"


def _flow_end(line: str, start: int) -> int:
    """The end of the flow collection (``{...}``, ``[...]``) that opens at ``start``, or of the line."""
    depth, i = 0, start
    while i < len(line):
        c = line[i]
        if c in "'\"":
            m = _QUOTED.match(line, i)
            i = m.end() if m else len(line)
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(line)


def _redact_pairs(line: str) -> tuple[str, int | None]:
    """(the line with credential-like keys' values blanked, the column of a blanked block key whose
    more-indented lines belong to it, or None)."""
    out, pos, child_col = [], 0, None
    while True:
        m = _YAML_KEY.search(line, pos)
        if m is None:
            break
        value_start = m.end() + len(line[m.end():]) - len(line[m.end():].lstrip(" \t"))
        first = line[value_start:value_start + 1]
        if first in ("'", '"'):
            q = _QUOTED.match(line, value_start)
            value_end = q.end() if q else len(line)
        elif first in ("{", "["):
            value_end = _flow_end(line, value_start)
        elif _ENV_REF.match(line, value_start):
            value_end = _ENV_REF.match(line, value_start).end()
        else:
            value_end = _PLAIN.match(line, value_start).end()
            while value_end > value_start and line[value_end - 1] in " \t":
                value_end -= 1
        out.append(line[pos:m.end()])
        if is_secret_key(m.group("key")):
            out.append(" " + _BLANKED)
            if value_end == value_start or line[value_start:value_end] in ("|", ">", "|-", ">-", "|+", ">+"):
                child_col = m.start()  # the value is on the lines below
        elif first in ("{", "["):
            out.append(line[m.end():value_start + 1] + _redact_pairs(line[value_start + 1:value_end])[0])
        elif first in ("'", '"'):
            out.append(line[m.end():value_end])
        else:  # a plain value: text such as "ValueError: api_token: x" holds further pairs
            out.append(line[m.end():value_start])
            value_end = value_start
        pos = value_end
    out.append(line[pos:])
    return "".join(out), child_col


def redact_yaml_text(text: str) -> str:
    """Blank the values of credential-like keys in YAML text with ``'[redacted]'`` (best effort, line by
    line: block and flow style, quoted keys and values, nested and multi-line values, whose lines
    are removed), and mask passwords in URIs."""
    lines, child_col = [], None
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if child_col is not None:
            if not stripped.strip() or indent > child_col or (indent == child_col and stripped.startswith("- ")):
                continue
            child_col = None
        redacted, child_col = _redact_pairs(line)
        lines.append(redacted)
    return mask_uris_in_text("".join(lines))


def redact_columns(frame):
    """A results table without the columns named like credentials (``param.api_token``)."""
    drop = [c for c in frame.columns if is_secret_key(str(c))]
    return frame.drop(columns=drop) if drop else frame


def redact_artifact(name: str, data: bytes) -> bytes:
    """A report file's bytes with credentials blanked, by its kind: JSON is parsed and
    :func:`blank`-ed, YAML and text have credential-like ``key: value`` pairs blanked (CSV cell by
    cell), every text has URI passwords masked; anything else (PNG, Parquet) is returned as it is (build those from
    redacted data)."""
    lower = name.lower()
    if lower.endswith(".json"):
        try:
            return json.dumps(blank(json.loads(data)), indent=2, sort_keys=True).encode()
        except ValueError:
            pass
    if lower.endswith(".csv"):
        import csv
        import io

        rows = list(csv.reader(io.StringIO(data.decode(errors="replace"), newline="")))
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\n").writerows([[redact_yaml_text(cell) for cell in row] for row in rows])
        return out.getvalue().encode()
    if lower.endswith((".json", ".yaml", ".yml", ".txt", ".log")):
        return redact_yaml_text(data.decode(errors="replace")).encode()
    return data


# --- URIs --------------------------------------------------------------------------------------

# scheme://user:password@host..., the password up to the last @ before the host (an unencoded @
# in a password is masked too).
_URI_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s/'\"]+)(?=@)")


def mask_uri(uri: str | None) -> str | None:
    """``postgresql://user:s3cret@host/db`` -> ``postgresql://user:***@host/db``; other URIs unchanged."""
    if not uri or "@" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return mask_uris_in_text(uri)
    if parts.password is None:
        return mask_uris_in_text(uri)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def mask_uris_in_text(text: str) -> str:
    """Every ``scheme://user:password@`` in a text with its password masked."""
    if "://" not in text or "@" not in text:
        return text
    return _URI_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
