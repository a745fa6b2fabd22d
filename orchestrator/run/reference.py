"""The reference runs after a sweep: the best config and its control (the trainable's
``control_overrides``, for example no teacher), each over ``control.seeds`` seeds, and the verdict
that compares them on the trainable's reference metric."""
from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.reports.paired import paired_reference_comparison
from orchestrator.reports.rows import Comparison, vocabulary_of
from orchestrator.run import resume
from orchestrator.run.options import SweepOptions, say
from orchestrator.run.progress import ProgressPrinter
from orchestrator.run.resources import ResourcePlan, plan_resources
from orchestrator.space.spec import SweepSpec
from orchestrator.store import layout
from orchestrator.store.cache import resolve_filesystem
from orchestrator.store.storage import read_text, write_text
from orchestrator.store.tracking import TAG_OUTCOME, TAG_ROLE, TAG_SWEEP, MLflowTrialCallback, Tracker
from trainables.runtime.runner import CASE_KEY
from trainables.runtime.trainable import TrialContext, get_trainable


REFERENCE_ROLES = ("reproduce", "control")  # the MLflow w2s.role of the reference runs


def reference_cases(spec: SweepSpec, best_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Re-runs of the best config and of its control over several seeds."""
    defn = get_trainable(spec.trainable)
    config = dict(best_config)
    if spec.control.workers and spec.control.workers != config.get("workers", 1):
        # Keep the global batch size when the reference runs use a different worker count.
        batch = defn.vocabulary.per_worker_batch
        if batch and isinstance(config.get(batch), int):
            config[batch] = max(1, config[batch] * config.get("workers", 1) // spec.control.workers)
        config["workers"] = spec.control.workers
    base_seed = int(config.get("seed", 0))
    cases = []
    for i in range(spec.control.seeds):
        seed = base_seed + i
        cases.append({"role": "reproduce", "seed": seed, "config": {**config, "seed": seed}})
        control = {**config, **defn.control_overrides(config), "seed": seed}
        cases.append({"role": "control", "seed": seed, "config": control})
    return cases


def run_reference(spec: SweepSpec, best_config: dict[str, Any], name: str, opts: SweepOptions,
                  ctx: TrialContext, plan: ResourcePlan, parent_id: str) -> Comparison:
    from ray import tune

    from orchestrator.run import tuner as tuner_mod

    cases = reference_cases(spec, best_config)
    ref_name = layout.reference_name(name)
    vocab = vocabulary_of(spec)
    metric = vocab.reference_of(spec.metric)
    say(f"  reference runs: best config and {vocab.control}, {spec.control.seeds} seeds each")
    from trainables.runtime.trainable import get_trainable

    # reference runs are recorded as the trials are: resolved config, constants once
    callbacks = [MLflowTrialCallback(opts.mlflow_uri, spec.experiment_name, parent_id, name, vocab.budget,
                                     role="reference", static=get_trainable(spec.trainable).static_metrics,
                                     trainable=spec.trainable),
                 ProgressPrinter(metric, "max", len(cases), vocab.budget), *resume.sweep_callbacks(opts.storage_path, name)]
    ref_dir = layout.reference_dir(opts.storage_path, name)
    cases_file = layout.reference_cases_file(opts.storage_path, name)
    cases_text = json.dumps(cases, sort_keys=True, default=str)
    if opts.resume and tune.Tuner.can_restore(ref_dir) and read_text(cases_file) != cases_text:
        # The interrupted reference runs were for another best config (the resumed trials changed
        # it): they are set aside, and the verdict is rebuilt for the final best config.
        set_aside_reference(spec, opts, name, ref_dir)
    write_text(cases_file, cases_text)
    ref_plan = plan
    if opts.resume and tune.Tuner.can_restore(ref_dir):
        tuner = tuner_mod.restore_tuner(spec, path=ref_dir, storage_path=opts.storage_path, name=ref_name, ctx=ctx,
                                        plan=plan)
    else:
        ref_plan = plan_resources(spec, plan.cluster, strict=False)
        tuner = tuner_mod.build_tuner(spec, name=ref_name, storage_path=opts.storage_path, ctx=ctx, plan=ref_plan,
                                      callbacks=callbacks, space={CASE_KEY: tune.grid_search(cases)}, reference=True)
    return paired_reference_comparison(resume.fit_watched(tuner, spec, name, plan=ref_plan), metric, vocab.control)


def set_aside_reference(spec: SweepSpec, opts: SweepOptions, name: str, ref_dir: str) -> None:
    """Move the reference runs of an earlier best config out of the way: their folder is renamed
    ``<name>-reference.superseded-<time>``, their MLflow child runs tagged ``superseded`` and
    deleted (soft: MLflow keeps them restorable)."""
    fs, path = resolve_filesystem(ref_dir)
    aside = f"{path}.superseded-{int(time.time())}"
    fs.move(path, aside)
    tracker = Tracker(opts.mlflow_uri, spec.experiment_name)
    tracker.ensure_experiment()
    superseded = 0
    for role in REFERENCE_ROLES:
        for run in tracker.find_runs(**{TAG_SWEEP: name, TAG_ROLE: role}):
            tracker.client.set_tag(run.info.run_id, TAG_OUTCOME, "superseded")
            if run.info.status == "RUNNING":
                tracker.finish(run.info.run_id, "KILLED")
            tracker.client.delete_run(run.info.run_id)
            superseded += 1
    say(f"  the reference runs started before the interruption were for another best config: set aside "
        f"({aside}, {superseded} MLflow run(s)); they run again for the final one")
