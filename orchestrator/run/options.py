"""What the command line hands the sweep (:class:`SweepOptions`), and the one way the driver prints
a line (plain, flushed, so that it reads the same in a terminal and in a CI log)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepOptions:
    address: str | None = None
    mlflow_uri: str = ""
    storage_path: str = ""
    name: str | None = None
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    num_samples: int | None = None
    quiet: bool = False
    origins: dict[str, str] = field(default_factory=dict)  # where mlflow_uri / storage_path came from
    all_rows: bool = False  # --all: print every row of the results table, not the top 10


def say(msg: str = "") -> None:
    print(msg, flush=True)
