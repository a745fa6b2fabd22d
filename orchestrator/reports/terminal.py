"""The results table as printed at the end of a sweep: fitted to the terminal, best first.

The full table (every trial, every column, in trial order) is ``results_table.txt`` and
``results.csv`` in the sweep folder; the printed one is for reading at a glance, so it

* is sorted by the search metric, best first, and shows the top ``top`` rows (``--all``: every row);
* moves columns whose value is the same in every row into one ``same for all:`` line above it;
* names searched keys by their last part (``temperature`` for ``loss_params.temperature``) when
  that is unambiguous;
* fits ``width`` columns (default: the terminal's, at most 100): cells are cut, then the least
  telling columns are left out, and named under the table.
"""
from __future__ import annotations

import math
import shutil
import textwrap
from typing import Any

from orchestrator.reports.rows import TrialRow, fmt, render_table
from orchestrator.store.tracking import short_key

DEFAULT_WIDTH = 100
DEFAULT_TOP = 10
CELL_MAX = 20  # a longer cell (a model entry as a dict) is cut: the full value is in results.csv


def terminal_width(limit: int = DEFAULT_WIDTH) -> int:
    """The terminal's width ($COLUMNS, else the tty's), at most ``limit``: wider tables are hard to
    read and wrap in CI logs."""
    return min(shutil.get_terminal_size((limit, 24)).columns, limit)


def sort_rows(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Best first; trials without the metric (errored, diverged, not run) last, in trial order."""
    def key(r: TrialRow):
        value = r.metrics.get(metric)
        if r.status == "diverged" or not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0, r.label)
        return (0, -value if mode == "max" else value, r.label)

    return sorted(rows, key=key)


def _cut(text: str, limit: int = CELL_MAX) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _headers_for(keys: list[str]) -> dict[str, str]:
    shorts = [short_key(k) for k in keys]
    return {k: (s if shorts.count(s) == 1 else k) for k, s in zip(keys, shorts)}


def terminal_table(rows: list[TrialRow], metric: str, mode: str, extra_metrics: list[str], keys: list[str],
                   width: int | None = None, top: int | None = DEFAULT_TOP) -> str:
    """The printed results table (see the module docstring); ``top=None`` shows every row."""
    width = width or terminal_width()
    ordered = sort_rows(rows, metric, mode)
    shown = ordered if top is None else ordered[:top]
    names = _headers_for(keys)
    # (header, cells over all rows, drop priority: higher goes first when the table is too wide)
    columns: list[tuple[str, list[str], int]] = [("trial", [r.label for r in ordered], -1)]
    columns += [(names[k], [fmt(r.params.get(k)) for r in ordered], 2) for k in keys]
    columns.append((metric, [fmt(r.metrics.get(metric, "-")) for r in ordered], -1))
    columns += [(m, [fmt(r.metrics.get(m, "-")) for r in ordered], 4 + i)
                for i, m in enumerate(x for x in extra_metrics if x != metric)]
    # "epoch", not the budget's name: a searched ``epochs`` key has a column of its own.
    columns.append(("epoch", [fmt(r.metrics.get("epoch", "-")) for r in ordered], 3))
    columns.append(("time", [f"{r.duration_s:.0f}s" if r.duration_s is not None else "-" for r in ordered], 50))
    columns.append(("status", [r.status for r in ordered], 1))

    same: list[str] = []
    if len(ordered) > 1:
        varying = []
        for header, cells, prio in columns:
            present = set(cells) - {"-", "None"}  # a trial that never reported it does not make it vary
            if prio >= 0 and len(present) == 1:
                same.append(f"{header}={present.pop()}")
            else:
                varying.append((header, cells, prio))
        columns = varying
    left_out: list[str] = []
    n = len(shown)

    def rendered() -> str:
        return render_table([h for h, _, _ in columns], [[_cut(c[i]) for _, c, _ in columns] for i in range(n)])

    table = rendered()
    while max(len(line) for line in table.splitlines()) > width:
        droppable = [c for c in columns if c[2] >= 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: (c[2], columns.index(c)))
        columns.remove(worst)
        left_out.append(worst[0])
        table = rendered()

    lines = []
    if same:
        lines += textwrap.wrap("same for all: " + ", ".join(same), width, subsequent_indent="  ",
                               break_on_hyphens=False)
    lines.append(table)
    notes = []
    if len(shown) < len(ordered):
        notes.append(f"top {len(shown)} of {len(ordered)} by {metric} (--all shows every row)")
    else:
        notes.append(f"{len(ordered)} rows, best {metric} first")
    if left_out:
        notes.append("not shown for width: " + ", ".join(left_out))
    lines += textwrap.wrap("; ".join(notes) + "; every row and column in results.csv", width,
                           break_on_hyphens=False)
    return "\n".join(lines)


def searched_yaml(config: dict[str, Any], keys: list[str]) -> str:
    """The searched keys' values of ``config`` as a short YAML block (dotted keys, as in a search
    space's ``--set``)."""
    import yaml

    from trainables.core.config import get_dotted

    # 4 significant digits on screen (lr: 0.0463, not 0.046303888392654875); best_config.yaml
    # holds the exact values to re-run
    values = {k: float(f"{v:.4g}") if isinstance(v, float) else v
              for k, v in ((k, get_dotted(config, k)) for k in keys)}
    return yaml.safe_dump({k: v for k, v in values.items() if v is not None}, sort_keys=False,
                          default_flow_style=False, width=10_000).rstrip()
