"""The quickstart as a user runs it: a real Ray Tune sweep with an ASHA scheduler, a 2-worker DDP
trial, a cached teacher, MLflow parent/child runs, the best config, and resume without duplicates."""
import json
import math
import os

import pytest

pytestmark = pytest.mark.slow

QUICK = ["--set", "num_samples=4", "--set", "control.seeds=2", "--set", "params.teacher.epochs=10"]


def mlflow_runs(tmp_path, sweep):
    from tests.conftest import mlflow_runs as runs_of

    return runs_of(tmp_path, "quickstart", sweep)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    import subprocess
    import sys

    from tests.conftest import REPO

    tmp = tmp_path_factory.mktemp("quickstart")

    def run(*args):
        return subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), *args], cwd=tmp,
                              capture_output=True, text=True, timeout=900)

    first = run("--name", "qs", *QUICK)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp, first, run


def test_sweep_lands_in_mlflow_with_one_child_per_trial(quickstart):
    tmp, proc, _ = quickstart
    client, runs = mlflow_runs(tmp, "qs")
    parents = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 4
    assert len({r.data.tags["w2s.trial_id"] for r in trials}) == 4
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert len(history) >= 1 and all(0.0 <= m.value <= 1.0 for m in history)
        assert [m.step for m in history] == list(range(1, len(history) + 1))  # one point per epoch
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
        assert run.data.params["student"] == "mlp_tiny"
    # reference runs are children too, tagged by role
    roles = sorted(r.data.tags["w2s.role"] for r in runs if r.data.tags["w2s.role"] in ("reproduce", "control"))
    assert roles == ["control", "control", "reproduce", "reproduce"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best_config.json", "results", "spec"} <= artifacts
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout


def test_the_researchers_view(quickstart):
    """Issue 19: children are named by trial and searched values and carry the resolved config and
    no per-epoch constant; the parent carries the spec as artifacts (not params), the description,
    the git commit and the dataset digest; the printed table fits 100 columns;
    `list` shows the sweep as finished."""
    from orchestrator.store.tracking import complete_params, flatten
    from trainables.runtime.trainable import get_trainable

    tmp, proc, run = quickstart
    client, runs = mlflow_runs(tmp, "qs")
    (parent,) = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    static = get_trainable("distill").static_metrics
    for child in (r for r in runs if r.data.tags["w2s.role"] == "trial"):
        index = child.data.tags["w2s.trial_id"].rsplit("_", 1)[1]
        assert child.info.run_name.startswith(f"t{int(index):02d} lr=")
        # every parameter, defaults included (a default {} is filled by the searched loss_params.*)
        params = child.data.params
        defaults = flatten(complete_params("distill", {"student": "mlp_tiny"}))
        assert all(k in params or any(p.startswith(k + ".") for p in params) for k in defaults)
        assert "epoch" not in child.data.metrics and not set(static) & set(child.data.metrics)
        assert "static.teacher_test_acc" in child.data.params
        assert "config.yaml" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert not any(k.startswith(("spec.", "best.")) for k in parent.data.params)
    assert parent.data.tags["mlflow.note.content"].startswith("CNN teacher")
    assert parent.data.tags["w2s.dataset_digest"] and parent.data.tags.get("mlflow.source.git.commit")
    table = proc.stdout.split("\nbest trial ")[0].rstrip().split("\n\n")[-1]  # printed between blank lines
    assert "trial " in table and max(len(line) for line in table.splitlines()) <= 100, table
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:3] for line in listed.stdout.splitlines() if line.startswith("qs ")] == [["qs", "finished", "4"]]


def test_a_two_worker_ddp_trial_ran(quickstart):
    tmp, _, _ = quickstart
    client, runs = mlflow_runs(tmp, "qs")
    ddp = [r for r in runs if r.data.tags["w2s.role"] == "trial" and r.data.params.get("workers") == "2"]
    assert len(ddp) == 1
    epochs = [m.step for m in client.get_metric_history(ddp[0].info.run_id, "val_acc")]
    assert max(epochs) >= 5 and ddp[0].data.metrics["val_acc"] > 0.5
    train_runs = os.listdir(tmp / "ray_results" / "qs" / "train_runs")
    assert len(train_runs) == 1 and train_runs[0].startswith("train-")


def test_best_config_is_the_best_trial(quickstart):
    tmp, proc, _ = quickstart
    best = json.loads((tmp / "ray_results" / "qs" / "best_config.json").read_text())
    _, runs = mlflow_runs(tmp, "qs")
    trial_vals = [r.data.metrics["val_acc"] for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert math.isclose(best["value"], max(trial_vals), rel_tol=1e-9)
    assert best["config"]["student"] == "mlp_tiny" and "lr" in best["config"]
    assert f"best trial {best['trial_id']}" in proc.stdout
    verdict = next(line for line in proc.stdout.splitlines() if line.startswith("reference: "))
    # paired by seed: the mean difference, its interval and n, and a call only from 3 seeds
    assert verdict.startswith("reference: best config vs its no-teacher control on test_acc: "), verdict
    assert "paired difference" in verdict and "95% CI" in verdict and "n=" in verdict, verdict
    assert "clear margin" not in verdict


def test_parent_run_holds_the_report(quickstart):
    tmp, proc, _ = quickstart
    client, runs = mlflow_runs(tmp, "qs")
    parent = next(r for r in runs if r.data.tags["w2s.role"] == "parent")
    listed = {a.path for folder in ("", "results", "plots") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"best_config.json", "best_config.yaml", "results/results.parquet", "results/results.csv",
            "results/results_table.txt", "plots/metric_vs_params.png", "plots/learning_curves.png"} <= listed
    # the winning model is one click from the sweep: the best trial's last checkpoint (from its Ray
    # Train run when it is the 2-worker trial)
    saved = {a.path for a in client.list_artifacts(parent.info.run_id, "best_checkpoint")}
    assert any(path.endswith(".pt") or "/" in path for path in saved), saved
    for name in ("results.parquet", "results.csv", "best_config.yaml", "plots/metric_vs_params.png"):
        assert (tmp / "ray_results" / "qs" / name).stat().st_size > 0
    assert "  finished 4 trials (" in proc.stdout


@pytest.fixture(scope="module")
def fused(quickstart):
    """A second sweep in the same working directory: the quickstart's trials fused 3 students each
    (issue 18), over the same teacher recipe (QUICK's). One sweep serves both the fused-trial checks
    and the cached-teacher check; each was a full sweep of its own (Ray start-up, MLflow, report)."""
    _, _, run = quickstart
    proc = run("--name", "qsf", *QUICK, "--set", "num_samples=2", "--set", "control.enabled=false",
               "--set", "params.vectorize=3", "--set", "scheduler.grace_period=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_second_sweep_reuses_the_cached_teacher(quickstart, fused):
    _, first, _ = quickstart
    assert "teacher_cache_hit=False" in first.stdout
    assert "teacher_cache_hit=True" in fused.stdout


def test_resume_reuses_parent_and_children(quickstart):
    tmp, _, run = quickstart
    _, before = mlflow_runs(tmp, "qs")
    again = run("--resume", "qs")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(resumed)" in again.stdout
    _, after = mlflow_runs(tmp, "qs")
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)


def test_fused_trials_with_one_set_and_asha_per_member(quickstart, fused):
    """Issue 18: `--set params.vectorize=3` turns the quickstart's trials into fused trials of 3
    students (the point's 2-worker trial a fused DDP trial); ASHA stops members one by one while
    the others of the same trial train on; every member is its own row and MLflow child run."""
    import csv

    tmp, _, _ = quickstart
    client, runs = mlflow_runs(tmp, "qsf")
    members = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(members) == 6
    by_trial: dict[str, list] = {}
    for r in members:
        by_trial.setdefault(r.data.tags["w2s.trial_id"], []).append(r)
    assert len(by_trial) == 2 and all(sorted(m.data.tags["w2s.probe"] for m in ms) == ["0", "1", "2"]
                                      for ms in by_trial.values())
    # the point's trial: 2 workers, member 0 the point's values
    (ddp,) = [ms for ms in by_trial.values() if ms[0].data.params["workers"] == "2"]
    (first,) = [m for m in ddp if m.data.tags["w2s.probe"] == "0"]
    assert float(first.data.params["lr"]) == 0.05 and float(first.data.params["loss_params.temperature"]) == 4.0
    epochs = {}
    for r in members:
        assert r.info.status == "FINISHED"
        epochs[r.info.run_id] = max(m.step for m in client.get_metric_history(r.info.run_id, "val_acc"))
        outcome = r.data.tags["w2s.outcome"]
        assert outcome == ("completed" if epochs[r.info.run_id] == 20 else "stopped_early"), (outcome, epochs)
    outcomes = [r.data.tags["w2s.outcome"] for r in members]
    assert "stopped_early" in outcomes and "completed" in outcomes
    # ASHA decides at its rungs (grace_period 2, reduction_factor 2: epochs 2, 4, 8, 16), and a
    # stopped member trains no epoch past its rung, in the DDP trial too (whose report returns
    # before the driver decides: it waits for the decision)
    stopped = {r.info.run_id: epochs[r.info.run_id] for r in members if r.data.tags["w2s.outcome"] == "stopped_early"}
    assert set(stopped.values()) <= {2, 4, 8, 16}, stopped
    # in some trial one member stopped while another went on to a later epoch
    assert any(len({epochs[m.info.run_id] for m in ms}) > 1 for ms in by_trial.values())
    with open(tmp / "ray_results" / "qsf" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {row["status"] for row in rows} == set(outcomes)
