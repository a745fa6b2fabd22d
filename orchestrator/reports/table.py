"""The results table as data: one row per trial (params, metrics, status, duration), as a pandas
DataFrame written to Parquet and CSV.

Parameter columns are named ``param.<dotted key>`` because trainables also report metrics with
parameter names (``lr`` is both the searched learning rate and the scheduled one of the last epoch).
"""
from __future__ import annotations

import io
import math
from typing import Any

from orchestrator.reports.rows import TrialRow
from orchestrator.store.tracking import TUNE_BOOKKEEPING

PARAM_PREFIX = "param."
# Known statuses in display order; any other label (for example ``diverged``) follows them.
STATUS_ORDER = ["completed", "stopped_early", "diverged", "error", "not_run"]


def param_column(key: str) -> str:
    return PARAM_PREFIX + key


def metric_names(rows: list[TrialRow], first: str | None = None) -> list[str]:
    names = sorted({k for r in rows for k, v in r.metrics.items()
                    if _is_number(v) and k not in TUNE_BOOKKEEPING and not k.startswith("config/")})
    if first in names:
        names.remove(first)
        names.insert(0, first)
    return names


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _column_values(values: list[Any]) -> list[Any]:
    """One type per column, so Parquet can store it: numbers stay numbers, anything mixed becomes text."""
    present = [v for v in values if v is not None]
    if all(_is_number(v) for v in present) or all(isinstance(v, str) for v in present) \
            or all(isinstance(v, bool) for v in present):
        return values
    import json

    return [None if v is None else (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
            for v in values]


def rows_to_frame(rows: list[TrialRow], keys: list[str], metric: str | None = None):
    import pandas as pd

    metrics = metric_names(rows, metric)
    data: dict[str, list[Any]] = {
        "trial_id": [r.label for r in rows],
        "status": [r.status for r in rows],
        "duration_s": [r.duration_s for r in rows],
    }
    for key in keys:
        data[param_column(key)] = _column_values([r.params.get(key) for r in rows])
    for name in metrics:
        data[name] = [float(r.metrics[name]) if _is_number(r.metrics.get(name)) else math.nan for r in rows]
    data["error"] = [r.error for r in rows]
    frame = pd.DataFrame(data)
    frame["duration_s"] = frame["duration_s"].astype("float64")
    return frame


def frame_to_csv(frame) -> str:
    return frame.to_csv(index=False)


def frame_to_parquet(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def status_counts(statuses) -> dict[str, int]:
    from collections import Counter

    return order_counts(Counter(statuses))


def order_counts(counts: dict[str, int]) -> dict[str, int]:
    ordered = {s: counts[s] for s in STATUS_ORDER if s in counts}
    ordered.update({s: n for s, n in sorted(counts.items()) if s not in ordered})
    return ordered


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()) or "no trials"
