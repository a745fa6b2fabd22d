"""A seed space's recipe table: ``recipes/<space file name>`` beside the space, listing each recipe
key's value in the authors' code, where it comes from, this space's value and why they differ
(tests/test_recipe_tables.py holds the space to it; docs/render_recipes.py renders it). The
dry run prints it, so the recipe a sweep will run is visible before it starts."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from orchestrator.space.yaml_io import parse_mapping


def recipe_table_path(space_file: str | None) -> str | None:
    """The table of the space at ``space_file``, when there is one."""
    if not space_file:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(space_file)), "recipes", os.path.basename(space_file))
    return path if os.path.isfile(path) else None


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def values_differ(ours: Any, authors: Any) -> bool:
    """Whether a row's two values differ, as a recipe value: NaN equals NaN (dinopl's ``nan``
    centre momentum, which means "no centring", is the same setting on both sides, while Python's
    ``nan != nan``); lists and mappings item by item."""
    if isinstance(ours, (list, tuple)) and isinstance(authors, (list, tuple)):
        return len(ours) != len(authors) or any(values_differ(o, a) for o, a in zip(ours, authors))
    if isinstance(ours, dict) and isinstance(authors, dict):
        return ours.keys() != authors.keys() or any(values_differ(ours[k], authors[k]) for k in ours)
    if isinstance(ours, float) and isinstance(authors, float) and math.isnan(ours) and math.isnan(authors):
        return False
    return bool(ours != authors)


def recipe_lines(space_file: str | None) -> list[str]:
    """The dry run's recipe section (empty when the space has no table)."""
    path = recipe_table_path(space_file)
    if path is None:
        return []
    with open(path, encoding="utf-8") as f:
        table = parse_mapping(f.read(), path)
    rel = os.path.relpath(path)
    lines = [f"# recipe ({rel}: each key as this space sets it; '!=' marks a difference from the authors' "
             f"{table.get('source_repo', '')})"]
    for row in table.get("rows", []):
        column = f" [{row['column']}]" if row.get("column") else ""
        searched = "searched " if row.get("searched") else ""
        line = f"  {row['key']}{column}: {searched}{_value(row['ours'])}"
        if values_differ(row["ours"], row["authors"]):
            line += f"  != authors {_value(row['authors'])}: {' '.join(str(row.get('note', '')).split())}"
        lines.append(line)
    return lines
