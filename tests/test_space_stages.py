"""The search-space wing piece by piece: the candidate-config enumerator that spec validation and
the preflight share, and each stage of parse_spec on a small spec."""
import pytest

from orchestrator.errors import SpecError
from orchestrator.space import candidates as candidates_mod
from orchestrator.space import parse, vectorized
from orchestrator.space.candidates import base_config, candidates
from orchestrator.space.domains import parse_search
from orchestrator.space.spec import parse_spec

F = "space.yaml"
SMALL = """
name: small
trainable: distill
params: {dataset: digits, student: mlp_tiny, loss: kd, epochs: 4}
search:
  lr: {loguniform: [1e-3, 1e-1]}
  loss_params.temperature: {choice: [1.0, 4.0]}
  batch_size: {randint: [16.0, 64]}
points_to_evaluate:
  - {lr: 0.01, loss_params.temperature: 2.0}
num_samples: 2
scheduler: {type: asha}
"""
VECTORIZED = """
name: v
trainable: w2s_probe
params: {vectorize: 3}
search:
  lr: {loguniform: [1e-4, 1e-2]}
  split_seed: {grid: [0, 1]}
"""


def searched(cfg):
    return cfg["lr"], cfg["loss_params"]["temperature"], cfg["batch_size"]


# --------------------------------------------------------------------------------------------
# Candidate trial configs
# --------------------------------------------------------------------------------------------


def test_one_value_at_a_time_yields_base_each_value_and_bound_then_points():
    spec = parse_spec(SMALL, F)
    found = list(candidates(spec))
    assert [(c.kind, c.where) for c in found] == [
        ("base", "params"),
        ("value", "search.lr.loguniform[low]"), ("value", "search.lr.loguniform[high]"),
        ("value", "search.loss_params.temperature.choice[0]"), ("value", "search.loss_params.temperature.choice[1]"),
        ("value", "search.batch_size.randint[low]"), ("value", "search.batch_size.randint[high]"),
        ("point", "points_to_evaluate[0]"),
    ]
    base = found[0].config
    assert searched(base) == (0.001, 1.0, 16)  # every searched key at its first candidate value
    assert isinstance(base["batch_size"], int)  # randint bounds are integers even when written 16.0
    assert base["epochs"] == 4 and base["workers"] == 1 and base["student"] == "mlp_tiny"
    assert [searched(c.config) for c in found[1:7]] == [
        (0.001, 1.0, 16), (0.1, 1.0, 16), (0.001, 1.0, 16), (0.001, 4.0, 16), (0.001, 1.0, 16), (0.001, 1.0, 64)]
    assert [(c.keys, c.value) for c in found[1:3]] == [(("lr",), 0.001), (("lr",), 0.1)]
    point = found[-1]
    assert searched(point.config) == (0.01, 2.0, 16) and point.point == 0
    assert point.keys == ("lr", "loss_params.temperature")


def test_combinations_yield_every_combination_then_points():
    spec = parse_spec(SMALL, F)
    found = list(candidates(spec, combine=True))
    combos = [c for c in found if c.kind == "combination"]
    assert len(combos) == 2 * 2 * 2 and found[-1].kind == "point"
    assert combos[0].config == base_config(spec)  # the first combination is the base config
    assert combos[0].where == "lr=0.001, loss_params.temperature=1.0, batch_size=16"
    assert {searched(c.config) for c in combos} == {(lr, t, b) for lr in (0.001, 0.1) for t in (1.0, 4.0)
                                                    for b in (16, 64)}
    assert searched(found[-1].config) == (0.01, 2.0, 16)


def test_combinations_stop_at_the_cap(monkeypatch):
    monkeypatch.setattr(candidates_mod, "MAX_COMBINATIONS", 3)
    spec = parse_spec(SMALL, F)
    assert [c.kind for c in candidates(spec, combine=True)] == ["combination"] * 3 + ["point"]


def test_without_searched_keys_the_base_is_the_fixed_config():
    spec = parse_spec("name: f\ntrainable: distill\nparams: {epochs: 2}\n", F)
    assert [(c.kind, c.where, c.config) for c in candidates(spec)] == [("base", "params", {"epochs": 2, "workers": 1})]
    assert [c.where for c in candidates(spec, combine=True)] == ["params"]


def test_candidate_configs_are_independent_copies():
    spec = parse_spec(SMALL, F)
    first, second = list(candidates(spec))[:2]
    first.config["loss_params"]["temperature"] = 99.0
    assert second.config["loss_params"]["temperature"] == 1.0
    assert "loss_params" not in spec.params


# --------------------------------------------------------------------------------------------
# parse_spec, stage by stage
# --------------------------------------------------------------------------------------------


def test_read_raw_applies_overrides_and_num_samples():
    raw = parse.read_raw(SMALL, F, ["params.epochs=6", "search.lr={uniform: [0.1, 0.2]}"], num_samples=5)
    assert raw["params"]["epochs"] == 6 and raw["search"]["lr"] == {"uniform": [0.1, 0.2]}
    assert raw["num_samples"] == 5 and raw["points_to_evaluate"] == [{"lr": 0.01, "loss_params.temperature": 2.0}]
    with pytest.raises(SpecError, match="the file is empty"):
        parse.read_raw("", F)


def test_schema_validates_the_model_and_takes_the_trainables_defaults():
    spec, defn = parse.schema(parse.read_raw(SMALL, F), F)
    assert defn.name == "distill" and spec.source_file == F
    assert (spec.metric, spec.mode) == (defn.metric, defn.mode) == ("val_acc", "max")
    assert spec.domains == {} and spec.scheduler.max_t is None  # later stages fill these in
    with pytest.raises(SpecError) as info:
        parse.schema({"name": "x", "trainable": "distill", "nmu_samples": 3}, F)
    assert str(info.value) == "space.yaml: nmu_samples: unknown key (did you mean 'num_samples'?)"
    with pytest.raises(SpecError, match="trainable: unknown trainable; known: "):
        parse.schema({"name": "x", "trainable": "nope"}, F)


def test_expand_fills_domains_and_vectorized_keys():
    spec, defn = parse.schema(parse.read_raw(SMALL, F), F)
    assert parse.expand(spec, defn) is spec
    assert {k: (d.kind, d.args) for k, d in spec.domains.items()} == {
        "lr": ("loguniform", [0.001, 0.1]), "loss_params.temperature": ("choice", [1.0, 4.0]),
        "batch_size": ("randint", [16.0, 64])}
    assert spec.vectorized_keys == []
    vec, vdefn = parse.schema(parse.read_raw(VECTORIZED, F), F)
    assert parse.expand(vec, vdefn).vectorized_keys == ["lr"]  # split_seed stays a trial-level key
    bad, bdefn = parse.schema(parse.read_raw(SMALL, F, ["search.lr={uniform: [0.5, 0.1]}"]), F)
    with pytest.raises(SpecError, match=r"search.lr.uniform: low must be below high"):
        parse.expand(bad, bdefn)


def test_vectorized_check_returns_its_findings_without_writing_into_the_spec():
    spec, defn = parse.schema(parse.read_raw(VECTORIZED, F, ["search_alg.type=optuna"]), F)
    spec.domains, _ = parse_search(spec.search, spec.params)
    found = vectorized.check_spec(spec, tuple(defn.vectorized_keys))
    assert found.keys == ["lr"] and spec.vectorized_keys == []
    assert [i.key for i in found.issues] == ["search_alg.type"]


def test_validate_reports_each_problem_against_the_key_the_user_wrote():
    spec, defn = parse.schema(parse.read_raw(SMALL, F, ["points_to_evaluate=[{lr: -1}]", "params.epochs=0"]), F)
    parse.expand(spec, defn)
    issues = parse.validate(spec, defn)
    assert [(i.key, i.value) for i in issues] == [("params.epochs", 0), ("points_to_evaluate[0].lr", -1)]
    ok, ok_defn = parse.schema(parse.read_raw(SMALL, F), F)
    assert parse.validate(parse.expand(ok, ok_defn), ok_defn) == []


def test_finish_sets_asha_max_t_and_control_once_the_space_is_valid():
    spec, defn = parse.schema(parse.read_raw(SMALL, F), F)
    parse.expand(spec, defn)
    assert parse.finish(spec, defn, valid=False) == [] and spec.scheduler.max_t is None
    assert parse.finish(spec, defn, valid=True) == [] and spec.scheduler.max_t == 4  # from params.epochs
    assert spec.control.enabled  # distill has a no-teacher control
    vec, vdefn = parse.schema(parse.read_raw(VECTORIZED, F), F)
    parse.finish(vec, vdefn, valid=True)
    assert not vec.control.enabled  # w2s_probe has none
    late, ldefn = parse.schema(parse.read_raw(SMALL, F, ["scheduler.grace_period=9"]), F)
    assert [(i.key, i.message) for i in parse.finish(late, ldefn, valid=True)] == \
        [("scheduler.grace_period", "exceeds max_t (4)")]


def test_parse_spec_is_the_stages_in_order():
    spec = parse_spec(SMALL, F)
    assert list(spec.domains) == ["lr", "loss_params.temperature", "batch_size"]
    assert spec.scheduler.max_t == 4 and spec.metric == "val_acc"
