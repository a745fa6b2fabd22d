"""Vectorised trials in the orchestrator: the spec and the Tune space, one row per configuration,
the best configuration as a stand-alone config, and the PGR summary."""
import math
from types import SimpleNamespace

import pytest
from ray import tune

from orchestrator.errors import SpecError
from orchestrator.reports.rows import format_table, pick_best, rows_from_results
from orchestrator.run.tuner import param_space
from orchestrator.space.spec import parse_spec
from orchestrator.space.vectorized import configs_per_trial, row_config
from trainables.runtime.vectorize import GRID_KEY, PROBES_KEY, expand_configs
from trainables.w2s_probe.params import PROBE_FIELDS
from trainables.w2s_probe.report import pgr_summary

SPACE = """
name: v
trainable: w2s_probe
params:
  w2s_loss: auxconf
  loss_params: {warmup_frac: 0.2}
  vectorize: 3
search:
  lr: {loguniform: [1e-4, 1e-2]}
  loss_params.aux_coef: {grid: [0.0, 0.5]}
  split_seed: {grid: [0, 1]}
num_samples: 2
"""


def test_per_configuration_keys_move_inside_the_trial():
    spec = parse_spec(SPACE)
    assert sorted(spec.vectorized_keys) == ["loss_params.aux_coef", "lr"]
    assert spec.expected_trials() == 4  # grid over split_seed x num_samples; the aux grid is inside
    assert configs_per_trial(spec) == 6  # 3 sampled lrs x 2 aux values
    space = param_space(spec)
    assert "lr" not in space and isinstance(space["split_seed"], dict)  # a trial-level grid stays
    slots = space[PROBES_KEY]
    assert len(slots) == 3 and all(isinstance(s["lr"], tune.search.sample.Float) for s in slots)
    assert len({id(s["lr"]) for s in slots}) == 3  # sampled independently
    assert space[GRID_KEY] == {"loss_params.aux_coef": [0.0, 0.5]}
    config = {**{k: v for k, v in space.items() if k not in (PROBES_KEY,)}, "split_seed": 0,
              PROBES_KEY: [{"lr": 1e-3}, {"lr": 2e-3}, {"lr": 3e-3}]}
    configs = expand_configs(config, PROBE_FIELDS)
    assert [(c["lr"], c["loss_params"]["aux_coef"]) for c in configs] == \
        [(1e-3, 0.0), (1e-3, 0.5), (2e-3, 0.0), (2e-3, 0.5), (3e-3, 0.0), (3e-3, 0.5)]
    assert all(c["loss_params"]["warmup_frac"] == 0.2 for c in configs)  # fixed defaults merged in


def test_without_sampled_keys_a_trial_trains_each_grid_value_once():
    spec = parse_spec(SPACE.replace("  lr: {loguniform: [1e-4, 1e-2]}\n", ""))
    assert configs_per_trial(spec) == 2 and len(param_space(spec)[PROBES_KEY]) == 1


@pytest.mark.parametrize("extra,key", [
    ("search_alg: {type: optuna}\n", "search_alg.type"),
    ("points_to_evaluate: [{loss_params.aux_coef: 0.5}]\n", "points_to_evaluate[0].loss_params.aux_coef"),
])
def test_vectorised_specs_reject_what_cannot_work(extra, key):
    text = SPACE.replace("  split_seed: {grid: [0, 1]}\n", "") + extra
    with pytest.raises(SpecError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(text)


def test_a_points_entry_gives_configuration_0_of_its_trial():
    from orchestrator.run.tuner import nested_points

    spec = parse_spec(SPACE.replace("  split_seed: {grid: [0, 1]}\n", "") + "points_to_evaluate: [{lr: 1e-3}]\n")
    (point,) = nested_points(spec)
    assert [slot["lr"] for slot in point[PROBES_KEY]][0] == 1e-3 and len(point[PROBES_KEY]) == 3
    assert all(1e-4 <= slot["lr"] <= 1e-2 for slot in point[PROBES_KEY][1:])


def result(trial_id, config, metrics, error=None):
    return SimpleNamespace(config=config, metrics={**metrics, "trial_id": trial_id}, error=error)


def probe_metrics(epoch, w2s, weak=0.6, strong=0.9):
    return {"epoch": epoch, "w2s_acc": w2s, "weak_acc": weak, "strong_acc": strong,
            "pgr": (w2s - weak) / (strong - weak) if strong > weak else math.nan}


def test_a_vectorised_trial_becomes_one_row_per_configuration():
    spec = parse_spec(SPACE.replace("  split_seed: {grid: [0, 1]}\n", ""))
    config = {"vectorize": 3, "epochs": 4, "w2s_loss": "auxconf", "loss_params": {"warmup_frac": 0.2},
              PROBES_KEY: [{"lr": 1e-3}, {"lr": 2e-3, "epochs": 2}], GRID_KEY: {"loss_params.aux_coef": [0.0, 0.5]}}
    metrics = {"w2s_acc": 0.85, "epoch": 4,
               "probes": [probe_metrics(4, 0.7), probe_metrics(3, 0.85), probe_metrics(2, 0.8),
                          probe_metrics(2, 0.5, strong=0.55)]}
    plain = result("b_1", {"lr": 5e-3, "epochs": 4}, {"w2s_acc": 0.75, "epoch": 4})
    rows = rows_from_results(spec, [result("a_0", config, metrics), plain])
    assert [r.label for r in rows] == ["a_0/p0", "a_0/p1", "a_0/p2", "a_0/p3", "b_1"]
    assert [r.params["lr"] for r in rows[:4]] == [1e-3, 1e-3, 2e-3, 2e-3]
    assert [r.params["loss_params.aux_coef"] for r in rows[:4]] == [0.0, 0.5, 0.0, 0.5]
    assert [r.status for r in rows] == ["completed", "stopped_early", "completed", "completed", "completed"]
    best = pick_best(rows, "w2s_acc", "max")
    assert best.label == "a_0/p1"
    best_config = row_config(spec, config, best.probe)
    assert best_config["lr"] == 1e-3 and best_config["loss_params"] == {"warmup_frac": 0.2, "aux_coef": 0.5}
    assert PROBES_KEY not in best_config and GRID_KEY not in best_config and "vectorize" not in best_config
    table = format_table(rows, "w2s_acc", ["weak_acc", "strong_acc", "pgr"], ["lr"])
    assert "a_0/p3" in table.splitlines()[5] and "pgr" in table.splitlines()[0]

    lines, summary = pgr_summary(rows, best)
    assert summary["w2s_configurations"] == 4 and summary["w2s_pgr_undefined"] == 1
    assert summary["w2s_median_pgr"] == pytest.approx(sorted([1 / 3, 5 / 6, 2 / 3])[1])
    assert summary["w2s_best_pgr"] == pytest.approx(5 / 6) and summary["w2s_best_weak_acc"] == 0.6
    assert "undefined for 1" in lines[0] and "a_0/p1" in lines[1]
    assert pgr_summary(rows[4:], rows[4]) == ([], {})
