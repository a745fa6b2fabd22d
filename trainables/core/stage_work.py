"""The work folder of the artifact-cache entry being built, for the stages trained in its build
(a teacher, a Sel-CL stage) to checkpoint into: it outlives an interrupted build, so the next
build of the same entry resumes the stage (``trainables/runtime/stages.py``). Set by the cache
(``orchestrator/store/cache.py``) around a build; None outside one (a test, a direct call)."""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from typing import Iterator

_WORK: ContextVar[str | None] = ContextVar("w2s_stage_work", default=None)


@contextlib.contextmanager
def stage_work(folder: str) -> Iterator[None]:
    """Within: :func:`stage_dir` gives folders under ``folder`` (the cache entry's work folder)."""
    token = _WORK.set(folder)
    try:
        yield
    finally:
        _WORK.reset(token)


def stage_dir(name: str) -> str | None:
    """The folder for a stage called ``name`` of the cache entry being built, or None outside a build."""
    work = _WORK.get()
    return None if work is None else os.path.join(work, name)
