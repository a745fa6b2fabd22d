"""The random-teacher digits sweep as a user runs it (shortened): a Tune grid over teacher
temperature and student initialisation, one MLflow child run per trial with probe metrics per
epoch and the random teacher's own, and the best config written; and the same sweep with
`--set params.vectorize=2`: one fused trial whose members are the grid, judged one by one by ASHA."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, mlflow_runs

pytestmark = pytest.mark.slow

SPACE = "search_spaces/random_teacher_digits.yaml"
FAST = ["--name", "rt", "--set", "params.epochs=4", "--set", "params.warmup_epochs=1",
        "--set", "params.probe_every=2", "--set", "params.probe_epochs=5"]
PROBES = ("knn_acc", "test_knn_acc", "linear_acc", "test_linear_acc")


def run_space(tmp, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), SPACE, *FAST, *args],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("random_teacher")
    return tmp, run_space(tmp)


def test_grid_over_teacher_temperature_and_student_init_lands_in_mlflow(sweep):
    import mlflow

    tmp, _ = sweep
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("random_teacher_digits")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.sweep` = 'rt'")
    parent = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    grid = {(r.data.params["loss_params.teacher_temp"], r.data.params["student_init"]) for r in trials}
    assert grid == {("0.05", "teacher"), ("0.05", "random"), ("0.1", "teacher"), ("0.1", "random")}
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        m = run.data.metrics
        for key in PROBES:
            assert 0.0 <= m[key] <= 1.0, key
        # the random teacher's probes are constants of the trial: logged once, as static.* params
        teacher = {k: float(run.data.params[f"static.teacher_{k}"]) for k in PROBES}
        assert all(0.0 <= v <= 1.0 for v in teacher.values()) and not any(f"teacher_{k}" in m for k in PROBES)
        assert math.isfinite(m["train_loss"]) and "epoch" not in m  # the epoch is each point's step
        history = client.get_metric_history(run.info.run_id, "knn_acc")
        assert [h.step for h in history] == [1, 2, 3, 4]
        # All trials share teacher_init_seed 0: the same random teacher, probed the same way.
        assert teacher["knn_acc"] == float(trials[0].data.params["static.teacher_knn_acc"])


def test_best_config_is_the_best_knn_trial(sweep):
    import mlflow

    tmp, _ = sweep
    best = json.loads((tmp / "ray_results" / "rt" / "best_config.json").read_text())
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("random_teacher_digits")
    runs = client.search_runs([exp.experiment_id],
                              filter_string="tags.`w2s.role` = 'trial' and tags.`w2s.sweep` = 'rt'")
    assert math.isclose(best["value"], max(r.data.metrics["knn_acc"] for r in runs), rel_tol=1e-9)
    assert best["config"]["teacher_mode"] == "no_update"


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The space's four grid points as the members of one fused trial; ASHA from epoch 1."""
    tmp = tmp_path_factory.mktemp("random_teacher_fused")
    run_space(tmp, "--name", "rtf", "--set", "params.vectorize=2", "--set", "scheduler.type=asha",
              "--set", "scheduler.grace_period=1")
    return tmp


def test_a_fused_sweep_gives_each_member_its_child_run_row_and_asha_verdict(fused):
    """Both grid keys are per-member keys: one trial trains all four combinations; each member is
    its own MLflow child run (tag w2s.probe) with its own metrics and results row, and ASHA stops
    members one by one while another trains on to the last epoch."""
    client, runs = mlflow_runs(fused, "random_teacher_digits", "rtf")
    members = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(members) == 4 and len({r.data.tags["w2s.trial_id"] for r in members}) == 1
    assert sorted(r.data.tags["w2s.probe"] for r in members) == ["0", "1", "2", "3"]
    grid = {(r.data.params["loss_params.teacher_temp"], r.data.params["student_init"]) for r in members}
    assert grid == {("0.05", "teacher"), ("0.05", "random"), ("0.1", "teacher"), ("0.1", "random")}
    for r in members:
        assert r.info.status == "FINISHED"
        history = client.get_metric_history(r.info.run_id, "knn_acc")
        assert [h.step for h in history] == list(range(1, len(history) + 1))  # one point per epoch it trained
        assert r.data.tags["w2s.outcome"] == ("completed" if len(history) == 4 else "stopped_early")
        assert math.isfinite(r.data.metrics["train_loss"]) and 0.0 <= r.data.metrics["knn_acc"] <= 1.0
        assert 0.0 <= float(r.data.params["static.teacher_knn_acc"]) <= 1.0
    outcomes = [r.data.tags["w2s.outcome"] for r in members]
    assert "stopped_early" in outcomes and "completed" in outcomes
    # the members trained on their own values: four different losses
    assert len({round(r.data.metrics["train_loss"], 6) for r in members}) == 4
    with open(fused / "ray_results" / "rtf" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and sorted(row["status"] for row in rows) == sorted(outcomes)
    assert {(row["param.loss_params.teacher_temp"], row["param.student_init"]) for row in rows} == grid
    assert {round(float(row["train_loss"]), 6) for row in rows} == {round(r.data.metrics["train_loss"], 6)
                                                                     for r in members}
