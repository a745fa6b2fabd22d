"""Run a sweep end to end: checks, Ray, preparation, the Tuner, the reference runs (run/reference.py), the report."""
from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.errors import UserError
from orchestrator.reports import publish as reporting
from orchestrator.reports.rows import SweepReport, pick_best, rows_from_results, searched_keys, vocabulary_of
from orchestrator.reports.table import status_counts
from orchestrator.reports.terminal import DEFAULT_TOP, searched_yaml, terminal_table
from orchestrator.run import preflight, resume
from orchestrator.run.cluster import check_cluster_locations, connection_error_message, origin_note, worker_runtime_env
from orchestrator.run.local_ray import prepare_local_ray, publish_address, record_local_ray
from orchestrator.run.options import SweepOptions, say
from orchestrator.run.progress import ProgressPrinter
from orchestrator.run.reference import run_reference
from orchestrator.run.resources import DRIVER_RESOURCE, ClusterResources, ResourcePlan, plan_resources
from orchestrator.run.watchdog import SweepStalled
from orchestrator.space.recipe_table import recipe_lines
from orchestrator.space.spec import SweepSpec, spec_to_yaml
from orchestrator.space.vectorized import plan_lines, row_config, trainable_fields
from orchestrator.store import layout
from orchestrator.store.cache import resolve_filesystem
from orchestrator.store.disk import disk_usage
from orchestrator.store.feature_store import FeatureStore
from orchestrator.store.secrets import (REDACTED, blank, is_secret_key, mask_uri, mask_uris_in_text, redact,
                                       redact_yaml_text)
from orchestrator.store.storage import join, write_text
from orchestrator.store.tracking import (GIT_COMMIT_TAG, TAG_DATASET_DIGEST, Tracker, check_tracking_uri,
                                         git_commit)
from orchestrator.store.vectorized_tracking import VectorizedMLflowCallback
from trainables.core.durations import INTERVAL_ENV
from trainables.core.paths import REPO_ROOT
from trainables.core.plugins import PLUGINS_ENV
from trainables.runtime.runner import unpack_config
from trainables.runtime.trainable import TrialContext, get_trainable

log = logging.getLogger("w2s")


def check_storage(storage_path: str) -> None:
    """The storage path must be writable before any trial starts."""
    marker = join(storage_path, f".w2s-write-test-{os.getpid()}")
    # Folders this check creates are removed again: a sweep refused later (bad input) leaves nothing.
    created = []
    if "://" not in storage_path:
        folder = os.path.abspath(storage_path)
        while folder and not os.path.exists(folder):
            created.append(folder)
            folder = os.path.dirname(folder)
    try:
        write_text(marker, "ok")
        fs, path = resolve_filesystem(marker)
        fs.delete_file(path)
    except Exception as exc:  # noqa: BLE001 - any failure here means trials could not save
        raise UserError(f"--storage-path {storage_path} is not writable ({type(exc).__name__}: {exc})") from None
    finally:
        for folder in created:  # innermost first
            try:
                os.rmdir(folder)
            except OSError:
                break


def sweep_dir(opts: SweepOptions, name: str) -> str:
    return layout.sweep_dir(opts.storage_path, name)


def default_name(spec: SweepSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_ray(address: str | None) -> ClusterResources:
    import ray

    # Train's controller notices a finished worker group at its next poll: half this interval on
    # average at the end of every DDP trial (Ray's default 2 s). A poll is one small actor call
    # per rank, and a slow one is not counted missed until RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: our own progress lines only
    if not address:
        # Spot preemption does not happen on a local machine; the watcher only adds log noise.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    env = {"PYTHONPATH": REPO_ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1"),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if os.environ.get(PLUGINS_ENV):
        env[PLUGINS_ENV] = os.environ[PLUGINS_ENV]  # workers must register the same plugin entries
    if os.environ.get(INTERVAL_ENV):
        env[INTERVAL_ENV] = os.environ[INTERVAL_ENV]  # a stage trained in a worker prints at the same pace
    quiet = ray.LoggingConfig(log_level="ERROR")
    if ray.is_initialized():
        return ClusterResources.from_ray(address or "local") if address else ClusterResources.local()
    try:
        if address:
            ray.init(address=address, runtime_env=worker_runtime_env(env, address, REPO_ROOT),
                     logging_level=logging.WARNING, logging_config=quiet, log_to_driver=True)
            resume.term_as_interrupt()  # over the handler ray.init installed
            return ClusterResources.from_ray(address)
        local = ClusterResources.local()
        own_tmp = prepare_local_ray()
        ray.init(num_cpus=int(local.cpus), num_gpus=int(local.gpus), runtime_env={"env_vars": env},
                 resources={DRIVER_RESOURCE: local.driver_slots},
                 logging_level=logging.WARNING, logging_config=quiet, log_to_driver=True)
        publish_address(own_tmp)
        resume.term_as_interrupt()  # over the handler ray.init installed
        return local
    except ConnectionError as exc:
        raise UserError(connection_error_message(address, exc)) from None


def run_prepare(spec: SweepSpec, ctx: TrialContext) -> dict[str, Any]:
    """The trainable's one-off preparation (for example training the shared teacher), as a Ray
    task holding one worker's resources, so it runs where trials could run."""
    import ray

    defn = get_trainable(spec.trainable)
    if defn.prepare is None:
        return {}
    searched = set(spec.domains) | {k for p in spec.points_to_evaluate for k in p}
    r = spec.resources
    ctx = replace(ctx, worker_resources={"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker})
    held = {"num_cpus": r.cpus_per_worker, "num_gpus": r.gpus_per_worker}
    if spec.sharded_prepare and r.workers > 1:
        # It starts its own workers, each holding one worker's resources, and only waits on them:
        # holding a device itself would leave N - 1 devices for N shards.
        held = {"num_cpus": 0, "num_gpus": 0}
    task = ray.remote(**held)(_prepare_task)
    return ray.get(task.remote(spec.trainable, spec.prepare_config(), searched, ctx)) or {}


def _prepare_task(trainable: str, fixed: dict[str, Any], searched: set[str], ctx: TrialContext):
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return get_trainable(trainable).prepare(fixed, searched, ctx)


@dataclass
class StartedSweep:
    """What starting a sweep sets up, for the steps after it."""

    name: str
    out_dir: str
    tracker: Tracker
    parent_id: str  # the sweep's MLflow parent run
    plan: ResourcePlan
    ctx: TrialContext
    restoring: bool  # --resume of a sweep Tune can restore


def run_sweep(spec: SweepSpec, spec_text: str, opts: SweepOptions) -> SweepReport:
    """Checks, start, the trainable's preparation, the Tuner, the report; the sweep's status
    (``w2s_status.json`` and the MLflow parent run) says how it ended."""
    t_start = time.time()
    name = opts.name or default_name(spec)
    tracker = check_before_start(spec, opts, name)
    run = start_sweep(spec, spec_text, opts, name, tracker)
    status, state = "FAILED", "failed"
    try:
        prepared = prepare_sweep(spec, run)
        results = tune_sweep(spec, opts, run)
        report = report_sweep(spec, opts, run, results, prepared, t_start)
        status = "FINISHED"
        return report
    except (resume.SweepInterrupted, SweepStalled) as exc:
        status = "KILLED"
        state = "stalled" if isinstance(exc, SweepStalled) else "interrupted"
        raise
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM, which the CLI turns into one) outside Tune's run: preparing, between
        # phases, in the report. Resumable like an interrupt during the trials.
        status, state = "KILLED", "interrupted"
        raise resume.SweepInterrupted(f"interrupted; the sweep's state is saved: resume it with --resume {name} "
                                      f"(or run the same command again)") from None
    finally:
        tracker.finish(run.parent_id, status)
        resume.write_status(run.out_dir, state if status == "KILLED" else status.lower())


def check_before_start(spec: SweepSpec, opts: SweepOptions, name: str) -> Tracker:
    """Everything that can fail before Ray starts: MLflow, the storage path, the preflight."""
    if not opts.address:
        plan_resources(spec, ClusterResources.local(), strict=True)  # a trial this machine cannot hold
    check_tracking_uri(opts.mlflow_uri)
    check_storage(opts.storage_path)
    repairs = preflight.run_all(spec, sweep_dir(opts, name), name, opts.resume)
    tracker = Tracker(opts.mlflow_uri, spec.experiment_name)
    try:
        tracker.ensure_experiment()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"MLflow at {mask_uri(opts.mlflow_uri)} refused the experiment {spec.experiment_name!r}: "
                        f"{mask_uris_in_text(str(exc))}") from None
    for trial_id, line in repairs:  # the trial's own run says it went back to an older checkpoint
        if trial_id:
            tracker.note_checkpoint_repair(name, trial_id, line)
    return tracker


def start_sweep(spec: SweepSpec, spec_text: str, opts: SweepOptions, name: str, tracker: Tracker) -> StartedSweep:
    """Ray, the resource plan, the sweep folder (saved spec, status ``running``), the parent run."""
    from ray import tune

    cluster = start_ray(opts.address)
    record_local_ray(sweep_dir(opts, name))
    if opts.address:
        check_cluster_locations(opts.mlflow_uri, opts.storage_path)
    plan = plan_resources(spec, cluster, strict=not opts.address)
    say(f"sweep {name}: {spec.expected_trials()} trials of {spec.trainable!r}, metric {spec.metric} ({spec.mode})")
    for line in plan.lines():
        say(f"  {line}")

    out_dir = sweep_dir(opts, name)
    restoring = opts.resume and tune.Tuner.can_restore(out_dir)
    if opts.resume and not restoring:
        say(f"  nothing to resume at {out_dir}; starting it fresh")
    layout.save_spec(out_dir, spec_text, opts.overrides, opts.num_samples)
    resume.write_status(out_dir, "running")

    parent_id, reused = tracker.parent_run(name, spec.resolved_dict(), spec_text, tags=parent_tags(spec))
    say(f"  MLflow: experiment {spec.experiment_name!r}, parent run {parent_id}{' (resumed)' if reused else ''}")
    ctx = TrialContext(artifacts=FeatureStore(layout.cache_dir(opts.storage_path)),
                       checkpoint_every=spec.checkpoint.every, sweep_name=name, storage_path=opts.storage_path)
    return StartedSweep(name, out_dir, tracker, parent_id, plan, ctx, restoring)


def parent_tags(spec: SweepSpec) -> dict[str, str]:
    """What a result must be traced back to: the code's git commit, and the digest of the data the
    trainable declares (``TrainableDef.data_digest``; none when the data is searched or unknown)."""
    tags = {GIT_COMMIT_TAG: git_commit(REPO_ROOT) or ""}
    digest = get_trainable(spec.trainable).data_digest
    if digest is not None:
        try:
            searched = set(spec.domains) | {k for p in spec.points_to_evaluate for k in p}
            tags[TAG_DATASET_DIGEST] = digest(spec.fixed_config(), searched) or ""
        except Exception as exc:  # noqa: BLE001 - a digest is a record, never a reason to stop a sweep
            log.warning("dataset digest not computed: %s", exc)
    return tags


def prepare_sweep(spec: SweepSpec, run: StartedSweep) -> dict[str, Any]:
    """The trainable's one-off preparation, logged on the parent run."""
    t0 = time.time()
    prepared = run_prepare(spec, run.ctx)
    if prepared:
        say(f"  prepared in {time.time() - t0:.1f}s: " + ", ".join(f"{k}={v}" for k, v in prepared.items()))
        run.tracker.log_params(run.parent_id, {f"prepared.{k}": v for k, v in prepared.items()})
    return prepared


def tune_sweep(spec: SweepSpec, opts: SweepOptions, run: StartedSweep):
    """The sweep's Tuner, new or restored, run to the end under the watchdog."""
    from orchestrator.run import tuner as tuner_mod

    budget = vocabulary_of(spec).budget
    callbacks = [VectorizedMLflowCallback(opts.mlflow_uri, spec.experiment_name, run.parent_id, run.name, budget,
                                          fields=trainable_fields(spec), keys=tuple(searched_keys(spec)),
                                          static=get_trainable(spec.trainable).static_metrics,
                                          trainable=spec.trainable),
                 ProgressPrinter(spec.metric, spec.mode, spec.expected_trials(), budget, keys=searched_keys(spec)),
                 *resume.sweep_callbacks(opts.storage_path, run.name)]
    if run.restoring:
        say(f"  resuming from {run.out_dir}")
        tuner = tuner_mod.restore_tuner(spec, path=run.out_dir, storage_path=opts.storage_path, name=run.name,
                                        ctx=run.ctx, plan=run.plan)
    else:
        tuner = tuner_mod.build_tuner(spec, name=run.name, storage_path=opts.storage_path, ctx=run.ctx, plan=run.plan,
                                      callbacks=callbacks)
    t0 = time.time()
    results = resume.fit_watched(tuner, spec, run.name, plan=run.plan)
    say(f"  tuner finished in {time.time() - t0:.1f}s")
    return results


def report_sweep(spec: SweepSpec, opts: SweepOptions, run: StartedSweep, results, prepared: dict[str, Any],
                 t_start: float) -> SweepReport:
    """Rows and the best trial from Tune's results, the reference runs, the published report."""
    rows = rows_from_results(spec, results)
    if run.restoring:
        lost = resume.archive_lost_runs(run.tracker, run.name, {r.trial_id for r in rows})
        if lost:
            say(f"  archived {len(lost)} MLflow child run(s) of trials lost in the crash: {', '.join(lost)}")
    best = pick_best(rows, spec.metric, spec.mode)
    report = SweepReport(rows=rows, metric=spec.metric, mode=spec.mode, best=best)
    best_config = None
    if best is not None:
        best_result = next(r for r in results if (r.metrics or {}).get("trial_id") == best.trial_id)
        best_config = row_config(spec, unpack_config(best_result.config), best.probe)
        log_best_checkpoint(run.tracker, run.parent_id,
                            getattr(best_result, "checkpoint", None)
                            or train_run_checkpoint(opts.storage_path, run.name, best.trial_id))
    if best_config is not None and spec.control.enabled:
        report.comparison = run_reference(spec, best_config, run.name, opts, run.ctx, run.plan, run.parent_id)
    finish_report(spec, report, best_config, run.name, opts, run.tracker, run.parent_id, prepared,
                  time.time() - t_start)
    return report


def train_run_checkpoint(storage_path: str, name: str, trial_id: str):
    """The newest checkpoint of a multi-worker trial: its Ray Train run keeps the checkpoints under
    ``train_runs/train-<trial id>/`` and reports only metrics to Tune, so Tune's result has none."""
    import glob
    from types import SimpleNamespace

    if "://" in storage_path:
        return None
    found = [d for d in glob.glob(os.path.join(layout.train_runs_dir(storage_path, name), f"train-{trial_id}", "**",
                                               "checkpoint_*"), recursive=True) if os.path.isdir(d)]
    return SimpleNamespace(path=max(found, key=os.path.getmtime)) if found else None


def log_best_checkpoint(tracker: Tracker, parent_id: str, checkpoint) -> None:
    """The best trial's last checkpoint as the parent run's ``best_checkpoint/`` artifact, so the
    model that won is one click from the sweep in MLflow. Only from a local storage path: a
    cloud one is already a shared place, named by the tag ``w2s.best_checkpoint``."""
    if checkpoint is None:
        return
    path = str(checkpoint.path)
    try:
        if "://" in path or not os.path.isdir(path):
            tracker.client.set_tag(parent_id, "w2s.best_checkpoint", path)
            return
        tracker.client.log_artifacts(parent_id, path, "best_checkpoint")
    except Exception as exc:  # noqa: BLE001 - the checkpoint stays in the sweep folder either way
        log.warning("best checkpoint not logged to MLflow: %s", exc)


def finish_report(spec: SweepSpec, report: SweepReport, best_config: dict[str, Any] | None, name: str,
                  opts: SweepOptions, tracker: Tracker, parent_id: str, prepared: dict[str, Any],
                  elapsed: float) -> None:
    vocab = vocabulary_of(spec)
    table = reporting.results_table(spec, report.rows)  # the full table, for results_table.txt
    keys = searched_keys(spec)
    say("")
    say(terminal_table(report.rows, spec.metric, spec.mode, vocab.present_table_metrics([r.metrics for r in report.rows]),
                       keys, top=None if opts.all_rows else DEFAULT_TOP))
    say("")
    out_dir = sweep_dir(opts, name)
    published = reporting.publish(spec, report.rows, report.best, best_config, name, out_dir, tracker, parent_id,
                                  table, report.comparison)

    counts = {"completed": 0, "stopped_early": 0, "diverged": 0, "error": 0,
              **status_counts(r.status for r in report.rows)}
    summary: dict[str, float] = {"trials": float(len(report.rows)), "sweep_time_s": elapsed,
                                 **{f"trials_{k}": float(v) for k, v in counts.items()}, **published.metrics}
    if report.best is None:
        say("no trial produced the metric; see the errors above")
    else:
        best = report.best
        headline = vocab.headline_of(spec.metric)
        shown = headline != spec.metric and isinstance(best.metrics.get(headline), (int, float))
        say(f"best trial {best.label}: {spec.metric} = {best.metrics[spec.metric]:.4f}"
            + (f", {headline} = {best.metrics[headline]:.4f}" if shown else ""))
        # The searched values only: the whole config is hundreds of characters on one line. Redacted:
        # logs are often shared.
        say("best config (searched keys):")
        say(textwrap.indent(searched_yaml(redact(best_config), keys), "  "))
        best_path = join(out_dir, layout.BEST_CONFIG_FILE)
        payload = {"sweep": name, "trial_id": best.trial_id, "probe": best.probe, "metric": spec.metric, "mode": spec.mode,
                   "value": best.metrics[spec.metric], "config": best_config,
                   "metrics": {k: v for k, v in best.metrics.items() if isinstance(v, (int, float))}}
        # Like every report file: credentials blanked (the saved search space keeps them, for --resume).
        write_text(best_path, json.dumps(blank(payload), indent=2, sort_keys=True))
        tracker.client.log_dict(parent_id, payload, layout.BEST_CONFIG_FILE)
        # The best config is the artifacts best_config.json / .yaml, not best.* params: dozens of
        # params made the runs table's column picker unusable. Its trial is named here instead.
        tracker.client.set_tag(parent_id, "w2s.best_trial", best.label)
        summary[f"best_{spec.metric}"] = float(best.metrics[spec.metric])
        if shown:
            summary[f"best_{headline}"] = float(best.metrics[headline])
        say(f"full config: {join(out_dir, layout.BEST_SPACE_FILE)} (re-run it: run_sweep.py <that file>), "
            f"with its metrics in {best_path}")
    if vocab.summary is not None:
        family_lines, family_metrics = vocab.summary(report.rows, report.best)
        for line in family_lines:
            say(line)
        summary.update(family_metrics)
    if report.comparison is not None:
        comp = report.comparison
        say("")
        say("reference: " + comp.verdict)
        summary["reference_best_mean"] = comp.best_mean
        summary["reference_control_mean"] = comp.control_mean
        if hasattr(comp, "metrics"):  # the paired difference, its interval and n (reports.paired)
            summary.update(comp.metrics())
        tracker.client.set_tag(parent_id, "w2s.reference_verdict", comp.verdict[:5000])
    usage = disk_usage([out_dir, layout.reference_dir(opts.storage_path, name)], layout.cache_dir(opts.storage_path))
    summary.update(usage.metrics())
    tracker.log_metrics(parent_id, {k: v for k, v in summary.items() if v == v})
    reporting.print_outcome(say, spec, None, published, None)
    say("")
    say(usage.line())
    say(f"results: {out_dir}  ({count_line(report.rows)}, {elapsed:.0f}s)")
    say(f"browse:  {mlflow_ui_command(opts.mlflow_uri)}")


def count_line(rows) -> str:
    """``8 trials``, or ``2 trials, 48 configurations`` when vectorised trials each trained several
    (the header counts trials: the two numbers must not look like a contradiction)."""
    trials = len({r.trial_id for r in rows})
    return f"{trials} trials" + (f", {len(rows)} configurations" if len(rows) != trials else "")


def mlflow_ui_command(uri: str) -> str:
    uri = mask_uri(uri)
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    exe = exe if os.path.exists(exe) else "mlflow"
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"{exe} ui --backend-store-uri {uri} --port 5000"


def load_resume_spec(opts: SweepOptions, name: str) -> tuple[SweepSpec, str]:
    out_dir = sweep_dir(opts, name)
    saved = layout.read_saved_spec(out_dir, opts.overrides, opts.num_samples)
    if saved is None:
        raise UserError(f"--resume {name}: no sweep of that name under {opts.storage_path} "
                        f"(looked for {join(out_dir, layout.SPEC_FILE)})")
    if opts.overrides or opts.num_samples is not None:
        # Tune restores every trial, and the searcher, with the configuration it was started with: a
        # change here would be saved as if it applied, but would not.
        as_started = layout.read_saved_spec(out_dir).spec
        diff = resume.first_difference(as_started.resolved_dict(), saved.spec.resolved_dict())
        if diff:
            flags = " ".join([*(f"--set {o}" for o in opts.overrides),
                              *([f"--num-samples {opts.num_samples}"] if opts.num_samples is not None else [])])
            raise UserError(f"--resume {name}: {flags} would change the sweep ({diff}), "
                            "but a resumed sweep's trials and searcher keep the configuration they started with. Resume "
                            f"without it, or start a new sweep with the change (run_sweep.py SPACE --set … --name NEW)")
    opts.overrides = saved.overrides
    return saved.spec, saved.text


def prepare_plan_lines(spec: SweepSpec) -> list[str]:
    """How resources.workers shards a sharded prepare step (and that the trials run on one worker)."""
    if not spec.sharded_prepare:
        return []
    r, what = spec.resources, spec.sharded_prepare
    if r.workers == 1:
        return [f"prepare: {what} in one process (resources.workers: N shards it N ways); trials train on 1 worker each"]
    return [f"prepare: {what} sharded {r.workers} ways, a Ray Train TorchTrainer of {r.workers} x "
            f"({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU), each worker a contiguous run of the "
            f"batches, assembled in order and published once every shard is done; trials train on 1 worker "
            f"each (resources.workers shards the prepare step, not the trials)"]


def dry_run(spec: SweepSpec, opts: SweepOptions) -> str:
    from orchestrator.run.tuner import param_space  # noqa: F401 - builds Tune domains: proves the space is valid

    cluster = ClusterResources.local() if not opts.address else None
    lines = ["# resolved search space", redact_yaml_text(spec_to_yaml(spec)).rstrip(), "", "# trial plan"]
    lines.append(f"trainable: {spec.trainable}  metric: {spec.metric} ({spec.mode})")
    lines.append(f"trials: {spec.expected_trials()} (num_samples {spec.num_samples}"
                 + (f" x grid {spec.expected_trials() // spec.num_samples}" if spec.expected_trials() != spec.num_samples else "")
                 + f"), first {len(spec.points_to_evaluate)} from points_to_evaluate")
    for key, d in spec.domains.items():
        lines.append(f"  search {key}: {REDACTED if is_secret_key(key) else d.describe()}")
    param_space(spec)
    lines += plan_lines(spec) + prepare_plan_lines(spec)
    preflight.check_credentials(spec)
    preflight.check_trials_possible(spec)
    # a dry run checks the plan, not the machine it runs on: missing data or weights are listed, not fatal
    missing = preflight.missing_inputs(spec)
    if cluster is not None:
        plan = plan_resources(spec, cluster)
        lines += plan.lines()
    else:
        lines.append(f"cluster at {opts.address}: resources are checked when the sweep connects")
    lines.append(f"mlflow: {mask_uri(opts.mlflow_uri)}{origin_note(opts.origins, 'mlflow')}")
    lines.append(f"storage: {opts.storage_path}{origin_note(opts.origins, 'storage')}")
    if missing:
        lines += ["", f"# missing inputs ({len(missing)}): a real run refuses to start until each is in place"]
        lines += [f"  {issue.render(None)}" for issue in missing]
    recipe = recipe_lines(spec.source_file)
    return "\n".join(lines + ([""] + recipe if recipe else []))
