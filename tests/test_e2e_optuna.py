"""Optuna (TPE) search through run_sweep, FIFO scheduler, single-worker trials."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_optuna_sweep_runs_and_picks_a_best(run_cli, tmp_path):
    proc = run_cli("--name", "opt", "--set", "search_alg={type: optuna, seed: 1}", "--set", "scheduler.type=fifo",
                   "--set", "num_samples=3", "--set", "points_to_evaluate=[]", "--set", "params.epochs=3",
                   "--set", "params.teacher.epochs=5", "--set", "control.enabled=false")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    best = json.loads((tmp_path / "ray_results" / "opt" / "best_config.json").read_text())
    assert 0.0 < best["value"] <= 1.0 and best["config"]["epochs"] == 3
    rows = (tmp_path / "ray_results" / "opt" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and all(",completed," in r for r in rows[1:])
