"""The digits W2S probe sweep as a user runs it: vectorised trials, one MLflow child run per probe
configuration carrying weak / W2S / strong accuracy and PGR, the parent's table, and a second
sweep over the same data that runs no teacher or embedding pass."""
import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SPACE = "search_spaces/w2s_digits_probe.yaml"
FAST = ["--set", "num_samples=1", "--set", "params.vectorize=2", "--set", "params.strong.train.epochs=5",
        "--set", "search.epochs={choice: [5, 8]}", "--set", "search.w2s_labels={grid: [soft]}"]
CONFIGS = 2 * 3  # 2 sampled configurations x 3 aux_coef values


def w2s_runs(tmp, sweep):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("w2s_digits_probe")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`w2s.sweep` = '{sweep}'")
    parent = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    children = sorted((r for r in runs if r.data.tags["w2s.role"] == "trial"), key=lambda r: int(r.data.tags["w2s.probe"]))
    return client, parent, children


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("w2s_digits")

    def run(name):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), SPACE, "--name", name, *FAST],
                              cwd=tmp, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return tmp, run("first"), run("second")


def test_every_configuration_is_a_child_run_with_weak_w2s_strong_and_pgr(sweeps):
    tmp, first, _ = sweeps
    client, parent, children = w2s_runs(tmp, "first")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert [r.data.tags["w2s.probe"] for r in children] == [str(k) for k in range(CONFIGS)]
    assert len({r.data.tags["w2s.trial_id"] for r in children}) == 1  # one vectorised trial
    for run in children:
        m = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        for key in ("weak_acc", "w2s_acc", "strong_acc", "val_w2s_acc", "agreement"):
            assert 0.0 <= m[key] <= 1.0, key
        gap = m["strong_acc"] - m["weak_acc"]
        if gap > 0:
            assert m["pgr"] == pytest.approx((m["w2s_acc"] - m["weak_acc"]) / gap, rel=1e-5)
        else:
            assert math.isnan(m["pgr"])
        epochs = int(run.data.params["epochs"])
        history = client.get_metric_history(run.info.run_id, "w2s_acc")
        assert [h.step for h in history] == list(range(1, epochs + 1))
        assert run.data.params["w2s_loss"] == "auxconf" and "loss_params.aux_coef" in run.data.params
    assert "feature_passes=2" in first.stdout and "model_trainings=2" in first.stdout


def test_the_parent_holds_the_w2s_table_and_summary(sweeps):
    tmp, first, _ = sweeps
    client, parent, _ = w2s_runs(tmp, "first")
    run_id = parent[0].info.run_id
    table = open(client.download_artifacts(run_id, "results/results_table.txt")).read()
    header = table.splitlines()[0].split()
    assert {"weak_acc", "w2s_acc", "strong_acc", "pgr"} <= set(header)
    assert sum("/p" in line for line in table.splitlines()) == CONFIGS
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(run_id, "results/results.csv")).read())))
    # PGR is undefined (empty in the CSV) where the strong ceiling does not beat the weak teacher.
    assert len(rows) == CONFIGS and all("pgr" in r and r["weak_acc"] != "" and r["w2s_acc"] != "" for r in rows)
    summary = parent[0].data.metrics
    assert summary["w2s_configurations"] == CONFIGS
    valid = [float(r["pgr"]) for r in rows if r["pgr"] not in ("", "nan") and not math.isnan(float(r["pgr"]))]
    if valid:
        assert summary["w2s_median_pgr"] == pytest.approx(sorted(valid)[len(valid) // 2] if len(valid) % 2 else
                                                          sum(sorted(valid)[len(valid) // 2 - 1:len(valid) // 2 + 1]) / 2)
    assert "W2S: " in first.stdout and "pgr" in first.stdout
    # issue 19: the printed table fits 100 columns (the file above keeps every column)
    printed = first.stdout.split("\nbest trial ")[0].rstrip().split("\n\n")[-1]
    assert "pgr" in printed and max(len(line) for line in printed.splitlines()) <= 100, printed
    best = json.loads((tmp / "ray_results" / "first" / "best_config.json").read_text())
    assert isinstance(best["probe"], int) and "probes" not in best["config"] and "probe_grid" not in best["config"]


def test_a_second_sweep_over_the_same_data_runs_no_teacher_or_embedding_pass(sweeps):
    tmp, first, second = sweeps
    assert "feature_passes=0" in second.stdout and "model_trainings=0" in second.stdout
    assert "weak_cache_hit=True" in second.stdout and "strong_cache_hit=True" in second.stdout
    _, _, children = w2s_runs(tmp, "second")
    assert len(children) == CONFIGS
    for run in children:
        # constants of the trial: logged once, as params, not as per-epoch metrics
        assert float(run.data.params["static.feature_passes"]) == 0 and float(run.data.params["static.model_trainings"]) == 0
        assert float(run.data.params["static.feature_cache_hits"]) == 2 and "feature_passes" not in run.data.metrics
