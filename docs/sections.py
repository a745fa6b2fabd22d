"""Generated sections of the docs: a block between two HTML-comment markers that a render script
rewrites from the code's own data, and checks (``--check``) so a test can hold the doc to it."""
from __future__ import annotations

import sys
from typing import Callable


def with_section(doc: str, begin: str, end: str, body: str, heading: str = "") -> str:
    """``doc`` with the text between ``begin`` and ``end`` (markers included, as ``body`` carries
    them) replaced by ``body``; appended under ``heading`` when the markers are absent."""
    if begin not in doc or end not in doc:
        return doc.rstrip("\n") + f"\n\n{heading}\n\n" + body + "\n"
    head, rest = doc.split(begin, 1)
    return head + body + rest.split(end, 1)[1]


def main(path: str, render: Callable[[str], str], script: str, argv: list[str]) -> int:
    """Rewrite ``path`` with ``render(doc)``; with ``--check``, exit 1 instead if it is stale."""
    with open(path) as f:
        doc = f.read()
    new = render(doc)
    if "--check" in argv:
        if new != doc:
            print(f"{path} is stale: run .venv/bin/python {script}", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        with open(path, "w") as f:
            f.write(new)
    return 0
