"""The layout of ``--storage-path``: every file and folder name a sweep writes, in one place, and
the one reader of a sweep's saved search space (used by ``--resume``, by a second run of the same
``--name`` and by ``report`` / ``compare``).

    <storage>/cache/                      shared artifacts (teachers, features), by recipe hash
    <storage>/<name>/                     the sweep: Tune's experiment folder plus
        w2s_search_space.yaml             the search space as given (before --set)
        w2s_overrides.json                the --set overrides and --num-samples
        w2s_status.json                   running | finished | failed | stalled | interrupted
        w2s_reference_cases.json          the cases the reference runs were started for
        w2s_driver.lock                   the running driver's lock (host, pid), taken before Ray starts
        w2s_local_ray.json                the driver's local Ray: its temp dir and processes
        best_config.json, best_config.yaml, results.*, summary.*, plots/
        train_runs/                       Ray Train runs of multi-worker trials
        trial_<trial id>/                 a trial's folder: result.json, checkpoint_*/state.pt
    <storage>/<name>-reference/           the best config's reference and control runs
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.space.spec import SweepSpec, parse_spec
from orchestrator.store.storage import join, read_text, write_text

SPEC_FILE = "w2s_search_space.yaml"
SPEC_OVERRIDES = "w2s_overrides.json"
STATUS_FILE = "w2s_status.json"
LOCK_FILE = "w2s_driver.lock"
LOCAL_RAY_FILE = "w2s_local_ray.json"
BEST_CONFIG_FILE = "best_config.json"
BEST_SPACE_FILE = "best_config.yaml"
PLOTS_DIR = "plots"
TRAIN_RUNS_DIR = "train_runs"
CACHE_DIR = "cache"
REFERENCE_SUFFIX = "-reference"
REFERENCE_CASES_FILE = "w2s_reference_cases.json"
TRIAL_DIR_PREFIX = "trial_"


def sweep_dir(storage_path: str, name: str) -> str:
    return join(storage_path, name)


def reference_name(name: str) -> str:
    return name + REFERENCE_SUFFIX


def reference_dir(storage_path: str, name: str) -> str:
    return join(storage_path, reference_name(name))


def reference_cases_file(storage_path: str, name: str) -> str:
    return join(sweep_dir(storage_path, name), REFERENCE_CASES_FILE)


def cache_dir(storage_path: str) -> str:
    return join(storage_path, CACHE_DIR)


def train_runs_dir(storage_path: str, name: str) -> str:
    return join(storage_path, name, TRAIN_RUNS_DIR)


def trial_dir_name(trial_id: str) -> str:
    """A trial's folder in the sweep's (Tune's ``trial_dirname_creator``)."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def trial_id_of_dir(name: str) -> str | None:
    """The trial id a folder named by :func:`trial_dir_name` carries; None for any other name."""
    if not name.startswith(TRIAL_DIR_PREFIX):
        return None
    return name[len(TRIAL_DIR_PREFIX):] or None


def save_spec(out_dir: str, text: str, overrides: list[str], num_samples: int | None) -> None:
    """What ``SavedSpec`` reads back: the file as given and the command line's changes to it."""
    write_text(join(out_dir, SPEC_FILE), text)
    write_text(join(out_dir, SPEC_OVERRIDES), json.dumps({"overrides": overrides, "num_samples": num_samples}))


@dataclass
class SavedSpec:
    spec: SweepSpec
    text: str  # the search-space file as given
    overrides: list[str]  # saved overrides followed by the extra ones


def read_saved_spec(out_dir: str, extra_overrides: list[str] | None = None,
                    num_samples: int | None = None) -> SavedSpec | None:
    """The spec a sweep was started with (its saved file and overrides, then ``extra_overrides``
    and ``num_samples`` when given), or None when ``out_dir`` holds no sweep."""
    text = read_text(join(out_dir, SPEC_FILE))
    if text is None:
        return None
    saved = json.loads(read_text(join(out_dir, SPEC_OVERRIDES)) or "{}")
    overrides = saved.get("overrides", []) + list(extra_overrides or [])
    spec = parse_spec(text, join(out_dir, SPEC_FILE), overrides, num_samples or saved.get("num_samples"))
    return SavedSpec(spec, text, overrides)
