"""How long things take, said the same way everywhere: the driver's progress lines and the lines a
cached stage (a teacher's training, a Sel-CL stage) prints while it runs."""
from __future__ import annotations

import os
import re

# The seconds between progress lines (the driver's and a stage's); checked before Ray starts
# (orchestrator/run/environment.py) and handed on to the workers.
INTERVAL_ENV = "W2S_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


# A cached stage's progress lines, indented and labelled as the driver's ("  start    ...").
STAGE_PREFIX = "  stage    "
# Ray forwards a trial's printed lines to the driver and, by default, holds back a line from a second
# process that differs from a recent one only in its numbers, until 5 s later or until Ray shuts
# down, which prints it under the sweep's report. Two trials' stage lines always differ only in their
# numbers, and the numbers are the news: Ray is told never to merge them (RAY_DEDUP_LOGS_ALLOW_REGEX,
# read when ray is first imported; orchestrator/cli.py sets it).
NEVER_DEDUP_REGEX = "^" + re.escape(STAGE_PREFIX)


def progress_interval_s() -> float:
    return float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"
