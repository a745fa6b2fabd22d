"""Checks that run after the search space parses and before Ray starts, so that a sweep that
cannot produce anything fails in seconds with one message, not in trial 37 with a traceback.

* :func:`check_trials_possible`: every combination of searched values is a valid trial (spec
  parsing checks each value on its own), and the time budget, the points to evaluate and the stop
  target cannot leave the sweep with zero trials that train.
* :func:`check_inputs_available`: each trainable's ``check_available`` hook (datasets on disk,
  checkpoint files to start from) for every candidate trial.
* :func:`repair_sweep_checkpoints`: on ``--resume``, a corrupt checkpoint is set aside so its trial goes on from the one before.

The candidate trial configs are those spec parsing checks, in combination
(:func:`orchestrator.space.candidates.candidates` with ``combine=True``).
"""
from __future__ import annotations

import os

from pydantic import ValidationError

from orchestrator.errors import SpecError, SpecIssue, UserError
from orchestrator.space.spec import SweepSpec, candidates
from orchestrator.store.layout import trial_id_of_dir
from trainables.core.config import first_problem

MIN_TIME_BUDGET_S = 10.0  # starting Ray's trial actors alone takes seconds
BOUNDED_01 = ("acc", "accuracy", "top1", "top5")  # metric name endings known to lie in [0, 1]


def _values(spec: SweepSpec):
    """(dotted key, value) for every value the space gives: params, searched values, points."""
    def walk(obj, key):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(v, f"{key}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from walk(v, f"{key}[{i}]")
        else:
            yield key, obj

    yield from walk(spec.params, "params")
    for key, domain in spec.domains.items():
        for i, value in enumerate(getattr(domain, "args", None) or []):
            yield from walk(value, f"search.{key}[{i}]") if isinstance(value, (dict, list)) else [(f"search.{key}", value)]
    for i, point in enumerate(spec.points_to_evaluate):
        yield from walk(point, f"points_to_evaluate[{i}]")


def check_credentials(spec: SweepSpec) -> None:
    """Credentials come from the environment, never from the search space: a credential-like key
    with a literal value would be saved with the sweep (its folder keeps the space for resuming)
    and sit in every trial's config on disk. ``${env:NAME}`` keeps only the name there; the trial
    reads the value (:func:`trainables.core.config.resolve_env_refs`). Every variable named must
    be set before the sweep starts."""
    import os
    import re

    from orchestrator.store.secrets import is_secret_key
    from trainables.core.config import env_ref

    issues: list[SpecIssue] = []
    for key, value in _values(spec):
        name = env_ref(value)
        if name is not None:
            if name not in os.environ:
                issues.append(SpecIssue(key, f"${{env:{name}}}: the environment variable {name} is not set; set "
                                             f"it before starting the sweep (and on every node of a cluster)"))
        elif isinstance(value, str) and value and is_secret_key(re.sub(r"\[\d+\]", "", key)):
            leaf = re.sub(r"\[\d+\]", "", key).split(".")[-1]
            issues.append(SpecIssue(key, f"a credential written into the search space would be saved with the sweep "
                                         f"and in every trial's config; give it as ${{env:NAME}} (for example "
                                         f"{leaf}: ${{env:{leaf.upper().replace('-', '_')}}}) and set that variable"))
    if issues:
        raise SpecError(spec.source_file, issues)


def check_trials_possible(spec: SweepSpec) -> None:
    from trainables.runtime.trainable import get_trainable

    model = get_trainable(spec.trainable).params_model
    file = spec.source_file
    issues: list[SpecIssue] = []

    if len(spec.domains) > 1:
        # Spec parsing validates each searched value with the others at their first value; a
        # combination of two valid values can still be an invalid trial that would crash mid-sweep.
        total, invalid = 0, []
        for c in candidates(spec, combine=True):
            if c.kind == "point":
                continue
            total += 1
            try:
                model.model_validate(c.config)
            except ValidationError as exc:
                invalid.append(f"{c.where}: {first_problem(exc)}")
        if invalid:
            issues.append(SpecIssue("search", f"{len(invalid)} of {total} combinations of searched values are invalid "
                                    f"trials, e.g. {invalid[0]}; narrow the ranges so that they fit together"))

    if spec.time_budget_s is not None and spec.time_budget_s < MIN_TIME_BUDGET_S:
        issues.append(SpecIssue("time_budget_s", f"is too short for any trial to report (starting trials alone "
                                f"takes seconds); use at least {MIN_TIME_BUDGET_S:g}", spec.time_budget_s))
    n_points = len(spec.points_to_evaluate)
    if n_points > spec.num_samples:
        issues.append(SpecIssue("num_samples", f"is below the {n_points} points_to_evaluate: each point takes one "
                                f"sample, so set num_samples to at least {n_points}", spec.num_samples))
    issues += _stop_target_issues(spec)
    if issues:
        raise SpecError(file, issues)


def _stop_target_issues(spec: SweepSpec) -> list[SpecIssue]:
    target = spec.stop.target
    if target is None or not str(spec.metric).lower().endswith(BOUNDED_01):
        return []
    if (spec.mode == "max" and target <= 0.0) or (spec.mode == "min" and target >= 1.0):
        return [SpecIssue("stop.target", f"is met by every trial's first report ({spec.metric} lies in [0, 1]), so "
                          "every trial would stop after one epoch: zero trials would train", target)]
    if not 0.0 <= target <= 1.0:
        return [SpecIssue("stop.target", f"can never be reached: {spec.metric} lies in [0, 1]"
                          + (f" (did you mean {target / 100:g}?)" if 1 < target <= 100 else ""), target)]
    return []


def missing_inputs(spec: SweepSpec) -> list[SpecIssue]:
    """The trainable's ``check_available`` hook on each distinct candidate trial: the data, weights and
    checkpoints a trial would need and does not find, one issue per distinct (key, problem)."""
    from trainables.runtime.trainable import get_trainable

    defn = get_trainable(spec.trainable)
    if defn.check_available is None:
        return []
    issues: list[SpecIssue] = []
    seen: set[tuple[str, str]] = set()
    for c in candidates(spec, combine=True):
        try:
            params = defn.params_model.model_validate(c.config)
        except ValidationError:
            continue  # reported by check_trials_possible
        for key, problem in defn.check_available(params):
            if (key, problem) in seen:
                continue
            seen.add((key, problem))
            searched = next((d for d in spec.domains if key == d or key.startswith(d + ".")), None)
            spec_key = f"search.{searched}" if searched else f"params.{key}"
            issues.append(SpecIssue(spec_key, problem))
    return issues


def check_inputs_available(spec: SweepSpec) -> None:
    """A real run refuses to start while an input is missing (a dry run lists them instead)."""
    issues = missing_inputs(spec)
    if issues:
        raise SpecError(spec.source_file, issues)


def trial_id_of(trial_dir: str) -> str | None:
    """The Tune trial id of a trial folder: from its name (``trial_<id>``, how the sweep names them),
    else from the last line of its ``result.json``. Not from that file first: the driver syncs it
    into the sweep folder only now and then, a driver killed in between leaves none there, and a
    corrupt checkpoint's repair note would then miss the trial's MLflow run."""
    import json

    named = trial_id_of_dir(os.path.basename(trial_dir.rstrip("/")))
    if named:
        return named
    try:
        with open(os.path.join(trial_dir, "result.json")) as f:
            lines = [line for line in f if line.strip()]
        return json.loads(lines[-1]).get("trial_id") if lines else None
    except (OSError, ValueError):
        return None


def repair_sweep_checkpoints(out_dir: str) -> list[tuple[str | None, str]]:
    """Before resuming: every ``state.pt`` the sweep kept must be readable (zip container and CRCs,
    without unpickling). A corrupt one is renamed ``state.pt.corrupt`` in place: its folder stays, so
    Tune still finds the checkpoint it recorded, and the trial's restore then goes on from the
    newest readable checkpoint of that trial, or starts over when it has none (see
    :func:`trainables.runtime.session.restore_local`). Returns (trial id, line) per repaired
    checkpoint, the line saying which. Local storage only (on object stores a corrupt checkpoint surfaces when its
    trial restores it)."""
    if "://" in out_dir or not os.path.isdir(out_dir):
        return []
    from trainables.runtime.session import CHECKPOINT_FILE, CORRUPT_SUFFIX, state_file_problem

    notes = []
    for root, _dirs, files in sorted(os.walk(out_dir)):
        base = os.path.basename(root)
        if CHECKPOINT_FILE in files and base.startswith("checkpoint_") and not base.endswith(CORRUPT_SUFFIX):
            path = os.path.join(root, CHECKPOINT_FILE)
            problem = state_file_problem(path)
            if not problem:
                continue
            os.replace(path, path + CORRUPT_SUFFIX)
            trial_dir = os.path.dirname(root)
            older = sorted(d for d in os.listdir(trial_dir) if d.startswith("checkpoint_") and d < base
                           and os.path.exists(os.path.join(trial_dir, d, CHECKPOINT_FILE))
                           and not state_file_problem(os.path.join(trial_dir, d, CHECKPOINT_FILE)))
            then = f"its trial goes on from {older[-1]}" if older else "its trial has no older checkpoint and starts over"
            notes.append((trial_id_of(trial_dir), f"checkpoint {os.path.relpath(path, out_dir)} {problem}: kept as "
                                                  f"{CHECKPOINT_FILE}{CORRUPT_SUFFIX}; {then}"))
    return notes


def run_all(spec: SweepSpec, out_dir: str, name: str, resuming: bool) -> list[tuple[str | None, str]]:
    """Every check above, in the order a user would fix them. Returns the checkpoint repairs
    (trial id, what was done), already printed."""
    check_credentials(spec)
    check_trials_possible(spec)
    check_inputs_available(spec)
    if resuming:
        from orchestrator.run.resume import check_not_running

        check_not_running(out_dir, name)
        repairs = repair_sweep_checkpoints(out_dir)
        for _, line in repairs:
            print(line, flush=True)
        return repairs
    return []
