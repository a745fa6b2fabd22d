"""Search-space parsing: valid files resolve, malformed ones fail with one exact message each."""
import glob
import os

import pytest

from orchestrator.errors import SpecError
from orchestrator.space.spec import parse_spec
from tests.conftest import REPO

BASE = """
name: t
trainable: distill
params:
  dataset: digits
  student: mlp_tiny
  loss: kd
  epochs: 4
search:
  lr: {loguniform: [1e-3, 1e-1]}
  loss_params.temperature: {choice: [1.0, 4.0]}
num_samples: 2
scheduler: {type: asha, grace_period: 1}
"""
F = "space.yaml"


def error_of(text, overrides=()):
    with pytest.raises(SpecError) as info:
        parse_spec(text, F, list(overrides))
    return str(info.value)


def test_base_parses_with_trainable_defaults():
    spec = parse_spec(BASE, F)
    assert spec.metric == "val_acc" and spec.mode == "max"
    assert spec.scheduler.max_t == 4  # taken from params.epochs
    assert spec.domains["lr"].args == [0.001, 0.1]  # 1e-3 is a float, not YAML 1.1's string
    assert spec.expected_trials() == 2


def test_grid_multiplies_samples():
    spec = parse_spec(BASE, F, ["search.loss_params.kd_weight={grid: [0.1, 0.5, 0.9]}"])
    assert spec.expected_trials() == 6


WITH_POINT = BASE + """points_to_evaluate:
  - {workers: 2, lr: 0.05, loss_params.temperature: 4.0}
"""


def test_set_params_fixes_a_key_the_file_searches_for_every_trial():
    spec = parse_spec(WITH_POINT, F, ["params.lr=0.1"])
    assert spec.params["lr"] == 0.1 and "lr" not in spec.domains
    # the file's point keeps what it set besides lr; lr is 0.1 there too
    assert spec.points_to_evaluate == [{"workers": 2, "loss_params.temperature": 4.0}]
    assert list(spec.domains) == ["loss_params.temperature"]


def test_set_params_mapping_fixes_the_searched_keys_under_it_and_no_others():
    spec = parse_spec(WITH_POINT, F, ["params.loss_params={temperature: 2.0}"])
    assert spec.params["loss_params"] == {"temperature": 2.0}
    assert list(spec.domains) == ["lr"] and spec.points_to_evaluate == [{"workers": 2, "lr": 0.05}]


def test_set_search_searches_a_key_the_file_fixes():
    spec = parse_spec(BASE, F, ["search.epochs={choice: [2, 4]}", "scheduler.max_t=4"])
    assert "epochs" not in spec.params and spec.domains["epochs"].args == [2, 4]
    # a key fixed inside a mapping: only that key leaves params
    nested = BASE.replace("  epochs: 4\n", "  epochs: 4\n  loss_params: {kd_weight: 0.5, label_smoothing: 0.1}\n")
    spec = parse_spec(nested, F, ["search.loss_params.kd_weight={choice: [0.1, 0.9]}"])
    assert spec.params["loss_params"] == {"label_smoothing": 0.1}
    assert spec.domains["loss_params.kd_weight"].args == [0.1, 0.9]


def test_set_search_null_stops_searching_a_key_and_points_stop_setting_it():
    spec = parse_spec(WITH_POINT, F, ["search.lr=null"])
    assert "lr" not in spec.domains and "lr" not in spec.params
    assert spec.points_to_evaluate == [{"workers": 2, "loss_params.temperature": 4.0}]
    # the last --set wins: searched again with a new range
    spec = parse_spec(WITH_POINT, F, ["search.lr=null", "search.lr={choice: [0.2]}"])
    assert spec.domains["lr"].args == [0.2]


def test_a_file_that_fixes_and_searches_one_key_is_still_an_error():
    both = BASE.replace("  epochs: 4\n", "  epochs: 4\n  lr: 0.1\n")
    assert error_of(both) == "space.yaml: search.lr: is also fixed under params; keep one of the two"


MALFORMED = [
    (["nmu_samples=3"], "space.yaml: nmu_samples: unknown key"),
    (["params.student=resnet9000"],
     "space.yaml: params.student: unknown model 'resnet9000' (did you mean 'resnet50'?); known models: "),
    (["params.loss=kdd"], "space.yaml: params.loss: unknown loss 'kdd' (did you mean 'kd'?); known losses: "),
    (["params.dataset=imagenet9"], "space.yaml: params.dataset: unknown dataset 'imagenet9' (did you mean 'imagenet'?); known datasets: "),
    (["search.lr={loguniform: [0, 0.1]}"],
     "space.yaml: search.lr.loguniform: a log-uniform range needs low > 0 (got [0, 0.1])"),
    (["search.lr={uniform: [0.5, 0.1]}"], "space.yaml: search.lr.uniform: low must be below high (got [0.5, 0.1])"),
    (["search.lr={logunif: [0.1, 0.5]}"],
     "space.yaml: search.lr: unknown search kind 'logunif'; use one of choice, grid, uniform, loguniform, "
     "randint, quniform, qloguniform, qrandint"),
    (["search.lr=0.1"], "space.yaml: search.lr: a searched parameter is a mapping with exactly one of"),
    (["search.lr={choice: []}"], "space.yaml: search.lr.choice: needs a non-empty list of values (got [])"),
    (["search.lr={quniform: [0.1, 0.5]}"], "space.yaml: search.lr.quniform: needs [low, high, step] (got [0.1, 0.5])"),
    (["search.batch_size={randint: [1.5, 4]}"],
     "space.yaml: search.batch_size.randint: bounds and step must be integers (got [1.5, 4])"),
    (["search.loss_params.temperature={choice: [1, -2]}"],
     "space.yaml: search.loss_params.temperature.choice[1]: input should be greater than 0 for loss 'kd' (got -2)"),
    (["search.lr={uniform: [-1, 0.1]}"], "space.yaml: search.lr.uniform[low]: input should be greater than 0 (got -1)"),
    (["params.foo=1"], "space.yaml: params.foo: unknown parameter (known: accum_steps, augment, auto_augment, batch_size, betas, bootstrap_beta, bootstrap_start, color_jitter, compile,"),
    (["params.loss_params={tempreature: 2}"],
     "space.yaml: params.loss_params.tempreature: loss 'kd' has no parameter(s) tempreature; accepted: kd_weight, "
     "label_smoothing, label_weight, temperature (did you mean 'temperature'?) (got 2)"),
    (["params.epochs=0"], "space.yaml: params.epochs: input should be greater than or equal to 1 (got 0)"),
    (["params.teacher.epochs=0"],
     "space.yaml: params.teacher.epochs: input should be greater than or equal to 1 (got 0)"),
    (["params.optimizer=lion"], "space.yaml: params.optimizer: input should be 'sgd', 'adam' or 'adamw' (got 'lion')"),
    (["resources.workers=0"], "space.yaml: resources.workers: input should be greater than or equal to 1 (got 0)"),
    (["resources.gpus_per_worker=1.5"],
     "space.yaml: resources.gpus_per_worker: more than one GPU per worker must be a whole number (got 1.5)"),
    (["search_alg.type=optuna", "search.loss_params.kd_weight={grid: [1, 2]}"],
     "space.yaml: search.loss_params.kd_weight.grid: the optuna search algorithm cannot run grid search; use "
     "choice, or search_alg.type: random"),
    (["search_alg.type=hyperopt"], "space.yaml: search_alg.type: input should be 'random' or 'optuna' (got 'hyperopt')"),
    (["scheduler.type=pbt"], "space.yaml: scheduler.type: input should be 'fifo' or 'asha' (got 'pbt')"),
    (["scheduler.grace_period=50"], "space.yaml: scheduler.grace_period: exceeds max_t (4) (got 50)"),
    (["trainable=foo"], "space.yaml: trainable: unknown trainable; known: "),
    (["metric=val_accc"], "space.yaml: metric: is not reported by trainable 'distill' (reported: "),
    (["mode=maximise"], "space.yaml: mode: input should be 'max' or 'min' (got 'maximise')"),
    (["num_samples=0"], "space.yaml: num_samples: input should be greater than or equal to 1 (got 0)"),
    (["name=bad name!"], "space.yaml: name: string should match pattern"),
    (["points_to_evaluate=[{workers: 2, lr: -1}]"],
     "space.yaml: points_to_evaluate[0].lr: input should be greater than 0 (got -1)"),
    (["params.warmup_epochs=5"], "space.yaml: params: warmup_epochs (5) must be below epochs (4)"),
    (["time_budget_s=-5"], "space.yaml: time_budget_s: input should be greater than 0 (got -5)"),
]


@pytest.mark.parametrize("overrides,expected", MALFORMED, ids=[m[1].split(": ")[1] + str(i) for i, m in enumerate(MALFORMED)])
def test_malformed_space_has_exact_error(overrides, expected):
    message = error_of(BASE, overrides)
    # these cases write the bad value with --set, so the error names that --set (test_error_hints.py)
    # where the file would be; the rest of the line is the same
    origin = next((f"--set {o}: " for o in reversed(overrides) if message.startswith(f"--set {o}: ")), None)
    if origin is not None:
        message = "space.yaml: " + message[len(origin):]
    assert message.startswith(expected), message
    assert "\n" not in message, f"one clear error expected, got several:\n{message}"


@pytest.mark.parametrize("text,expected", [
    ("a: [", "space.yaml: not valid YAML: line 1, column 5: expected the node content, but found '<stream end>'"),
    ("- 1\n- 2\n", "space.yaml: the top level must be a mapping of keys (got 'list')"),
    ("", "space.yaml: the file is empty"),
    ("name: x\n", "space.yaml: trainable: is required"),
])
def test_unparseable_files(text, expected):
    assert error_of(text) == expected


def test_missing_required_searched_value_in_point():
    msg = error_of(BASE, ["points_to_evaluate=[{momentum: 0.5}]"])
    assert msg == ("space.yaml: points_to_evaluate[0].momentum: is neither searched nor fixed; add it to search "
                   "or params so every trial has a value")


def test_override_syntax_errors():
    assert error_of(BASE, ["epochs"]) == "space.yaml: --set: expects key=value (got 'epochs')"
    assert error_of(BASE, ["bad key=1"]).startswith("space.yaml: --set: the key must be a dotted path")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "search_spaces", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_space_dry_runs(path, tmp_path, monkeypatch, capsys):
    from orchestrator import cli
    from tests.seed_data import local_data_overrides

    # Seed spaces that read image folders keep the authors' paths; point them at stand-in files.
    overrides = [arg for pair in local_data_overrides(path, str(tmp_path)) for arg in ("--set", pair)]
    # run_sweep.py's own main, in this process from a scratch working directory as run_cli would run
    # it: a fresh interpreter per space spent most of its 5-15 s importing torch, Ray and MLflow, once
    # for each of the ~40 spaces. The script as a subprocess is run by the tests below and the e2e tests.
    monkeypatch.chdir(tmp_path)
    rc = cli.main([path, "--dry-run", *overrides])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "# trial plan" in out and "max concurrent trials" in out


def test_cli_reports_spec_error_with_nonzero_exit(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("mlp_tiny", "resnet9000"))
    proc = run_cli(str(bad), "--dry-run", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bad}: params.student: unknown model 'resnet9000'")
    assert "Traceback" not in proc.stderr


def test_impossible_resources_fail_before_ray(run_cli, tmp_path):
    bad = tmp_path / "big.yaml"
    bad.write_text(BASE + "resources: {workers: 64, cpus_per_worker: 4}\n")
    proc = run_cli(str(bad), "--dry-run", timeout=120)
    assert proc.returncode == 2
    assert "resources: a 64-worker trial needs 256 CPUs (64 x cpus_per_worker 4 + driver) but the local machine" \
        in proc.stderr


def test_gpus_on_a_cpu_machine_fail(run_cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the check under test is the no-GPU case
    bad = tmp_path / "gpu.yaml"
    bad.write_text(BASE + "resources: {gpus_per_worker: 1}\n")
    proc = run_cli(str(bad), "--dry-run", timeout=120)
    assert proc.returncode == 2
    assert "resources.gpus_per_worker: GPUs requested but the local machine has none; set it to 0 to train on CPU" \
        in proc.stderr


def test_an_unknown_searched_key_is_one_line_for_the_key_not_one_per_value():
    message = error_of(BASE, ["search.nope={choice: [1, 2, 3]}"])
    assert message.count("\n") == 0 and message.startswith("--set search.nope={choice: [1, 2, 3]}: search.nope: "
                                                            "unknown parameter (known: ")
    message = error_of(BASE, ["search.loss_params.tempr={uniform: [1, 2]}"])
    assert message == ("--set search.loss_params.tempr={uniform: [1, 2]}: search.loss_params.tempr: loss 'kd' has "
                       "no parameter(s) tempr; accepted: kd_weight, label_smoothing, label_weight, temperature "
                       "(did you mean 'temperature'?)")
    # a bad value is still named with its place and value
    assert error_of(BASE, ["search.lr={choice: [0.1, -1]}"]).endswith(
        "search.lr.choice[1]: input should be greater than 0 (got -1)")


def test_whole_number_epochs_written_as_floats_set_ashas_max_t():
    assert parse_spec(BASE, F, ["params.epochs=1e3"]).scheduler.max_t == 1000
    assert parse_spec(BASE, F, ["params.epochs=6.0"]).scheduler.max_t == 6


def test_a_resources_string_other_than_auto_names_the_value_once():
    assert error_of(BASE, ["resources=gpu"]) == ("--set resources=gpu: resources: must be a mapping (workers, "
                                                 "cpus_per_worker, gpus_per_worker, ...) or 'auto' (got 'gpu')")
