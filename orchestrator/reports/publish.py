"""Sweep reports: the results table (Parquet, CSV, text), plots, the seed-style summary and the
exported best config, written under ``<storage>/<name>/`` and logged on the sweep's MLflow parent run.

Runs at the end of every sweep (``sweep.finish_report``) and on demand (``run_sweep.py report
NAME``), when it rebuilds everything from what the sweep stored: the Tune experiment folder (trial
configs, per-epoch results, errors), or, when that folder is gone, the MLflow child runs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UserError
from orchestrator.reports.export import best_space_yaml
from orchestrator.reports.headline import build_headline, headline_html, headline_png, headline_records, headline_table
from orchestrator.reports.importance import (history_figure, importance_figure, importance_lines, param_importance,
                                             parallel_coordinates_html)
from orchestrator.reports.paired import PairedComparison, paired_reference_comparison
from orchestrator.reports.plots import LOG_KINDS, png_bytes, sweep_figures
from orchestrator.reports.rows import (Comparison, TrialRow, format_table, pick_best, rows_from_results,
                                       searched_keys, trial_status, vocabulary_of)
from orchestrator.reports.summary import MethodEntry, covers_several, format_summary, summarize, summary_records
from orchestrator.reports.table import PARAM_PREFIX, frame_to_csv, frame_to_parquet, rows_to_frame
from orchestrator.space.spec import SweepSpec, get_dotted, parse_spec, set_dotted
from orchestrator.store.layout import BEST_SPACE_FILE, PLOTS_DIR, read_saved_spec, reference_dir
from orchestrator.store.secrets import mask_uri, redact, redact_artifact, redact_columns
from orchestrator.store.storage import join, write_bytes
from orchestrator.store.tracking import STATIC_PREFIX, TAG_OUTCOME, TAG_PROBE, TAG_ROLE, TAG_SWEEP, TAG_TRIAL, Tracker
from trainables.runtime.vocabulary import ReportData

# Tune statuses of trials a sweep had not finished when its state was last saved.
UNFINISHED = {"RUNNING", "PENDING", "PAUSED"}


@dataclass
class Published:
    """What a report wrote: local/storage paths, artifact paths on the parent run, and texts."""
    files: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    summary_text: str | None = None
    headline_text: str | None = None  # the headline figure as a table
    importance: list[str] = field(default_factory=list)  # the hyperparameter-importance line
    metrics: dict[str, float] = field(default_factory=dict)  # for the parent run (importance per key)


def log_scale_keys(spec: SweepSpec) -> set[str]:
    return {k for k, d in spec.domains.items() if d.kind in LOG_KINDS}


def results_table(spec: SweepSpec, rows: list[TrialRow]) -> str:
    """The printed results table: the search metric, then the trainable's table metrics that some
    trial reports."""
    extra = vocabulary_of(spec).present_table_metrics([r.metrics for r in rows])
    return format_table(rows, spec.metric, extra, searched_keys(spec))


def report_data(spec: SweepSpec, frame, rows: list[TrialRow], entries: list[MethodEntry],
                comparison: Comparison | None) -> ReportData:
    """What the family hooks and the headline figure get: the frame, the rows, the best configuration
    of each summary group over its seeds (best group first) and the reference runs by seed."""
    vocab = vocabulary_of(spec)
    sign = 1 if spec.mode == "max" else -1
    by_id = {r.label: r for r in rows}  # label: a fused trial's members share its trial_id
    ranked = sorted(entries, key=lambda e: -sign * e.metric_mean)
    groups = {"/".join(e.group.values()): [by_id[t] for t in e.trial_ids if t in by_id] for e in ranked}
    reference = {}
    if isinstance(comparison, PairedComparison):
        reference = {"reproduce": comparison.best_by_seed, "control": comparison.control_by_seed}
    return ReportData(frame=frame, rows=rows, metric=spec.metric, mode=spec.mode, keys=searched_keys(spec),
                      log_keys=log_scale_keys(spec), param_prefix=PARAM_PREFIX, groups=groups, reference=reference,
                      choice_keys={k for k, d in spec.domains.items() if d.kind in ("choice", "grid")},
                      reference_metric=vocab.reference_of(spec.metric), control=vocab.control)


def research_views(data: ReportData, vocab, out: Published) -> dict[str, bytes]:
    """The headline figure (PNG, HTML, table), hyperparameter importance, the optimisation history
    and the parallel-coordinates view. Each is optional: one that fails is left out with a warning,
    as a plot is (a report must not lose a finished sweep's results over a figure)."""
    import logging

    import pandas as pd

    log = logging.getLogger("w2s")
    blobs: dict[str, bytes] = {}
    try:
        headline = build_headline(data, vocab)
        if headline is not None:
            blobs[f"{PLOTS_DIR}/headline.png"] = png_bytes(headline_png(headline))
            blobs[f"{PLOTS_DIR}/headline.html"] = headline_html(headline).encode()
            out.headline_text = headline_table(headline)
            blobs["results/headline.txt"] = out.headline_text.encode()
            blobs["results/headline.csv"] = pd.DataFrame(headline_records(headline)).to_csv(index=False).encode()
    except Exception as exc:  # noqa: BLE001
        log.warning("headline figure skipped: %s: %s", type(exc).__name__, exc)
    args = (data.frame, data.metric, data.mode, data.keys, data.column, data.log_keys)
    try:
        importance = param_importance(*args)
        if importance:
            finished = sum(1 for r in data.rows if r.status in ("completed", "stopped_early", "terminated"))
            out.importance = importance_lines(importance, data.metric, finished)
            out.metrics.update({f"importance.{k}": v for k, v in importance.items()})
            blobs[f"{PLOTS_DIR}/param_importance.png"] = png_bytes(importance_figure(importance, data.metric))
            blobs["results/param_importance.csv"] = pd.DataFrame(
                {"param": list(importance), "importance": list(importance.values())}).to_csv(index=False).encode()
    except Exception as exc:  # noqa: BLE001
        log.warning("hyperparameter importance skipped: %s: %s", type(exc).__name__, exc)
    for name, build in (("optimization_history.png", lambda: history_figure(data.frame, data.metric, data.mode)),
                        ("parallel_coordinates.html", lambda: parallel_coordinates_html(*args))):
        try:
            made = build()
        except Exception as exc:  # noqa: BLE001
            log.warning("%s skipped: %s: %s", name, type(exc).__name__, exc)
            continue
        if made is not None:
            blobs[f"{PLOTS_DIR}/{name}"] = made.encode() if isinstance(made, str) else png_bytes(made)
    return blobs


def publish(spec: SweepSpec, rows: list[TrialRow], best: TrialRow | None, best_config: dict[str, Any] | None,
            sweep: str, out_dir: str, tracker: Tracker | None = None, parent_id: str | None = None,
            table: str | None = None, comparison: Comparison | None = None, loss_curves: bool = False) -> Published:
    """Write the results table, the summary, the headline figure, the plots and ``best_config.yaml``
    under ``out_dir`` and log them on the parent run (when given)."""
    keys = searched_keys(spec)
    vocab = vocabulary_of(spec)
    frame = redact_columns(rows_to_frame(rows, keys, spec.metric))
    out = Published()
    blobs: dict[str, bytes] = {
        "results/results.parquet": frame_to_parquet(frame),
        "results/results.csv": frame_to_csv(frame).encode(),
    }
    if table is not None:
        blobs["results/results_table.txt"] = table.encode()
    entries = summarize(rows, keys, spec.metric, spec.mode, vocab)
    if covers_several(entries):
        import pandas as pd

        out.summary_text = format_summary(entries)
        blobs["results/summary.txt"] = out.summary_text.encode()
        blobs["results/summary.csv"] = pd.DataFrame(summary_records(entries)).to_csv(index=False).encode()
    data = report_data(spec, frame, rows, entries, comparison)
    figures = {f"{PLOTS_DIR}/{fname}": png_bytes(fig)
               for fname, fig in sweep_figures(frame, rows, spec.metric, spec.mode, keys, log_scale_keys(spec),
                                               vocab, data=data, loss_curves=loss_curves).items()}
    figures.update(research_views(data, vocab, out))
    for artifact in figures:
        if artifact.startswith(f"{PLOTS_DIR}/"):
            out.plots.append(join(out_dir, artifact))
    blobs.update(figures)
    if best is not None and best_config is not None:
        blobs[BEST_SPACE_FILE] = best_space_yaml(spec, best_config, best, sweep, join(out_dir, BEST_SPACE_FILE)).encode()

    # Credentials never reach a report file: in the sweep folder or on the parent run.
    blobs = {artifact: redact_artifact(artifact, data) for artifact, data in blobs.items()}
    for artifact, data in blobs.items():
        # results.* sit at the top of the sweep folder (where users look for them); the MLflow
        # artifact paths group them under results/.
        local = artifact.removeprefix("results/")
        path = join(out_dir, local)
        write_bytes(path, data)
        out.files.append(path)
    if tracker is not None and parent_id is not None:
        log_artifacts(tracker, parent_id, blobs)
        out.artifacts = sorted(blobs)
    return out


def log_artifacts(tracker: Tracker, run_id: str, blobs: dict[str, bytes]) -> None:
    """Log files with their artifact paths, one upload per folder."""
    import tempfile

    by_dir: dict[str, dict[str, bytes]] = {}
    for artifact, data in blobs.items():
        folder, _, fname = artifact.rpartition("/")
        by_dir.setdefault(folder, {})[fname] = data
    for folder, files in by_dir.items():
        with tempfile.TemporaryDirectory(prefix="w2s-report-") as tmp:
            for fname, data in files.items():
                with open(os.path.join(tmp, fname), "wb") as f:
                    f.write(data)
            tracker.client.log_artifacts(run_id, tmp, artifact_path=folder or None)


# --------------------------------------------------------------------------------------------
# Rebuilding a report from what a sweep stored
# --------------------------------------------------------------------------------------------


@dataclass
class StoredSweep:
    name: str
    spec: SweepSpec
    rows: list[TrialRow]
    source: str  # where the rows came from: the Tune experiment folder or MLflow
    comparison: Comparison | None = None

    @property
    def best(self) -> TrialRow | None:
        return pick_best(self.rows, self.spec.metric, self.spec.mode)


def tune_results(path: str):
    """(ResultGrid, {trial_id: Tune status}) of a Tune experiment folder, or None when it holds none."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, FileNotFoundError):
        return None
    return ResultGrid(analysis), {t.trial_id: t.status for t in analysis.trials}


def rows_from_tune(spec: SweepSpec, path: str) -> list[TrialRow] | None:
    loaded = tune_results(path)
    if loaded is None:
        return None
    grid, states = loaded
    rows = rows_from_results(spec, grid)
    for row in rows:
        if states.get(row.trial_id) in UNFINISHED and row.status != "error":
            row.status = "unfinished" if row.history else "not_run"
    return rows


def _param_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def find_parent(uri: str, sweep: str, experiment: str | None = None):
    """The sweep's parent run (tags ``w2s.sweep``, ``w2s.role=parent``) and its Tracker, or (None, None)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        experiments = [exp] if exp is not None else []
    else:
        experiments = client.search_experiments()
    for exp in experiments:
        tracker = Tracker(uri, exp.name)
        tracker.experiment_id = exp.experiment_id
        runs = tracker.find_runs(**{TAG_SWEEP: sweep, TAG_ROLE: "parent"})
        if runs:
            return tracker, runs[0]
    return None, None


def spec_from_mlflow(tracker: Tracker, parent) -> SweepSpec:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.client.download_artifacts(parent.info.run_id, "spec/resolved_spec.json", tmp)
        with open(local) as f:
            resolved = json.load(f)
    # Credentials were blanked when it was logged: drop them, so their defaults apply.
    return parse_spec(yaml.safe_dump(redact(resolved)), f"MLflow run {parent.info.run_id}: spec/resolved_spec.json")


def rows_from_mlflow(tracker: Tracker, sweep: str, spec: SweepSpec) -> list[TrialRow]:
    """Trial rows from the sweep's child runs: params, last metrics, per-epoch history of the
    search metric and of the trainable's learning-curve metrics, outcome tag, and the trial's training time."""
    keys = searched_keys(spec)
    vocab = vocabulary_of(spec)
    rows = []
    for run in tracker.find_runs(**{TAG_SWEEP: sweep, TAG_ROLE: "trial"}):
        config: dict[str, Any] = {}
        metrics = dict(run.data.metrics)
        for key, text in run.data.params.items():
            if key.startswith(STATIC_PREFIX):  # a constant of the trial, logged once as a param
                value = _param_value(text)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics[key[len(STATIC_PREFIX):]] = float(value)
                continue
            set_dotted(config, key, _param_value(text))
        history: dict[int, dict[str, float]] = {}
        for name in dict.fromkeys([spec.metric, *vocab.curves, *vocab.loss_curves]):
            for point in tracker.client.get_metric_history(run.info.run_id, name):
                history.setdefault(point.step, {"epoch": float(point.step)})[name] = point.value
        # the epoch is each metric point's step, not a metric of its own
        if history:
            metrics["epoch"] = max(history)
        elif isinstance(metrics.get("epoch"), float) and metrics["epoch"].is_integer():
            metrics["epoch"] = int(metrics["epoch"])
        status = run.data.tags.get(TAG_OUTCOME) or (
            "unfinished" if run.info.status == "RUNNING" else trial_status(config, metrics, run.info.status == "FAILED", vocab.budget))
        probe = run.data.tags.get(TAG_PROBE)  # a member of a fused trial: its own row
        rows.append(TrialRow(trial_id=run.data.tags.get(TAG_TRIAL, run.info.run_id), status=status,
                             probe=int(probe) if probe is not None and probe.isdigit() else None,
                             params={k: get_dotted(config, k) for k in keys}, metrics=metrics, config=config,
                             duration_s=metrics.get("trial_time_s"),
                             history=[history[s] for s in sorted(history)]))
    rows.sort(key=lambda r: (r.trial_id, r.probe or 0))
    return rows


def load_sweep(name: str, storage_path: str, mlflow_uri: str | None) -> StoredSweep:
    """A finished, interrupted or resumed sweep, from its Tune folder (preferred) or MLflow."""
    out_dir = join(storage_path, name)
    saved = read_saved_spec(out_dir)
    spec = saved.spec if saved else None
    tracker = parent = None
    if mlflow_uri and mlflow_store_exists(mlflow_uri):
        tracker, parent = find_parent(mlflow_uri, name, spec.experiment_name if spec else None)
    if spec is None and parent is not None:
        spec = spec_from_mlflow(tracker, parent)
    if spec is None:
        raise UserError(f"no sweep named {name!r}: nothing at {out_dir} and no MLflow parent run tagged "
                        f"w2s.sweep={name} in {mask_uri(mlflow_uri) or 'MLflow'} (pass --storage-path / --mlflow-uri)")
    rows = rows_from_tune(spec, out_dir)
    source = f"Tune results in {out_dir}"
    if rows is None and parent is not None:
        rows, source = rows_from_mlflow(tracker, name, spec), f"MLflow child runs of {parent.info.run_id}"
    if rows is None:
        raise UserError(f"sweep {name!r}: no Tune results under {out_dir} and no MLflow runs to rebuild from")
    comparison = None
    ref = tune_results(reference_dir(storage_path, name))
    if ref is not None:
        vocab = vocabulary_of(spec)
        comparison = paired_reference_comparison(ref[0], vocab.reference_of(spec.metric), vocab.control)
    return StoredSweep(name=name, spec=spec, rows=rows, source=source, comparison=comparison)


def mlflow_store_exists(uri: str) -> bool:
    """A report never creates a tracking store: an sqlite file must already exist."""
    if uri.startswith("sqlite:///"):
        return os.path.exists(uri[len("sqlite:///"):])
    return True


def report_sweep(name: str, storage_path: str, mlflow_uri: str | None, say=print,
                 loss_curves: bool = False) -> StoredSweep:
    """``run_sweep.py report NAME``: rebuild, print, write and log the sweep's report."""
    sweep = load_sweep(name, storage_path, mlflow_uri)
    spec, rows = sweep.spec, sweep.rows
    table = results_table(spec, rows)
    say(f"sweep {name}: {len(rows)} trials of {spec.trainable!r}, metric {spec.metric} ({spec.mode}), "
        f"from {sweep.source}")
    say("")
    say(table)
    tracker = parent_id = None
    if mlflow_uri and mlflow_store_exists(mlflow_uri):
        tracker, parent = find_parent(mlflow_uri, name, spec.experiment_name)
        parent_id = parent.info.run_id if parent is not None else None
    best = sweep.best
    out = publish(spec, rows, best, best.config if best else None, name, join(storage_path, name),
                  tracker, parent_id, table, sweep.comparison, loss_curves=loss_curves)
    print_outcome(say, spec, best, out, sweep.comparison)
    if parent_id:
        say(f"logged on MLflow parent run {parent_id}: " + ", ".join(out.artifacts))
    else:
        say(f"MLflow: no parent run of {name} found at {mask_uri(mlflow_uri)}; files written to storage only")
    return sweep


def print_outcome(say, spec: SweepSpec, best: TrialRow | None, out: Published,
                  comparison: Comparison | None) -> None:
    if out.summary_text:
        say("")
        say("summary (best configuration per method, mean ± std over seeds):")
        say(out.summary_text)
    if out.headline_text:
        say("")
        say("headline: " + out.headline_text)
    for line in out.importance:
        say(line)
    say("")
    if best is not None:
        say(f"best trial {best.label}: {spec.metric} = {best.metrics[spec.metric]:.4f}")
    if comparison is not None:
        say("reference: " + comparison.verdict)
    for path in out.plots:
        say(f"plot: {path}")
    for path in out.files:
        if path.endswith(("results.parquet", BEST_SPACE_FILE)):
            say(f"wrote {path}")
