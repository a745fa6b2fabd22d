"""Issue 15: the random-teacher spaces of dinopl's shipped configs and of the locality / data-size
studies parse and dry-run; the dino family's plots hook (trainables/dino/report.py) draws probe
accuracy against α or n_samples with the right mean ± std over teacher seeds; and (slow) the digits
locality sweep puts that figure on the parent MLflow run."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.space.spec import load_spec
from tests.conftest import REPO
from tests.seed_data import local_data_overrides

SPACES = os.path.join(REPO, "search_spaces")
# space: (trials, what it must set)
FULL = {
    "random_teacher_cifar10": (6, {"encoder": "resnet18_tiny", "knn_metric": "l2", "teacher_bn_mode": "from_data"}),
    "random_teacher_cifar10_v1": (3, {"encoder": "resnet18_tiny", "teacher_bn_mode": "from_student",
                                      "weight_decay": 0.01}),
    "random_teacher_cifar10_v3": (3, {"optimizer": "sgd", "head.last_layer_bias": True, "head.out_dim": 512,
                                      "loss_params.objective": "mse", "min_lr": 1e-6}),
    "random_teacher_cifar10_dino": (3, {"teacher_mode": "ema", "crops.per_crop_augs": ["dino"],
                                        "crops.global_crops": 2, "weight_decay_end": 0.4}),
    "random_teacher_cifar10_supervised": (3, {"supervised": True, "head.out_dim": 10}),
    "random_teacher_mnist": (3, {"dataset": "mnist"}),
    "random_teacher_mnist_supervised": (3, {"dataset": "mnist", "supervised": True}),
    "random_teacher_tinyimagenet": (3, {"dataset": "tinyimagenet", "teacher_bn_mode": "from_data"}),
    "random_teacher_tinyimagenet_supervised": (3, {"dataset": "tinyimagenet", "head.out_dim": 1000}),
    "random_teacher_cifar10_locality": (18, {"student_init": "interpolated"}),
    "random_teacher_cifar10_datasize": (18, {"samples_per_epoch": 45000}),
    "random_teacher_locality_digits": (6, {"student_init": "interpolated", "dataset": "digits"}),
    "random_teacher_datasize_digits": (6, {"dataset": "digits"}),
    "random_teacher_v1_digits": (3, {"dataset": "digits", "teacher_bn_mode": "from_student"}),
    "random_teacher_v3_digits": (3, {"dataset": "digits", "loss_params.objective": "mse"}),
    "random_teacher_dino_digits": (3, {"dataset": "digits", "teacher_mode": "ema"}),
    "random_teacher_supervised_digits": (3, {"dataset": "digits", "supervised": True}),
    "random_teacher_tinyimagenet_digits": (3, {"dataset": "digits", "teacher_bn_mode": "from_data"}),
}
# each dinopl config space: its digits variant (the same recipe, shrunk)
DIGITS_OF = {
    "random_teacher_cifar10": "random_teacher_digits",
    "random_teacher_cifar10_v1": "random_teacher_v1_digits", "random_teacher_mnist": "random_teacher_v1_digits",
    "random_teacher_cifar10_v3": "random_teacher_v3_digits", "random_teacher_cifar10_dino": "random_teacher_dino_digits",
    "random_teacher_cifar10_supervised": "random_teacher_supervised_digits",
    "random_teacher_mnist_supervised": "random_teacher_supervised_digits",
    "random_teacher_tinyimagenet_supervised": "random_teacher_supervised_digits",
    "random_teacher_tinyimagenet": "random_teacher_tinyimagenet_digits",
    "random_teacher_cifar10_locality": "random_teacher_locality_digits",
    "random_teacher_cifar10_datasize": "random_teacher_datasize_digits",
}
# what a digits variant may change: the data, the size of the run, the probes' step budget and a
# 65,536-d head (the header of each variant says why)
SHRUNK = {"dataset", "dataset_kwargs", "epochs", "warmup_epochs", "batch_size", "probe_every", "probe_epochs",
          "probe_batch_size", "head.hidden_dims", "head.bottleneck_dim", "head.out_dim"}
# variants written before the dinopl configs had one each: a smaller recipe of the same family
FAMILY_ONLY = {"random_teacher_digits", "random_teacher_locality_digits", "random_teacher_datasize_digits"}
STUDIES = {"random_teacher_cifar10_locality": "student_init_alpha", "random_teacher_locality_digits": "student_init_alpha",
           "random_teacher_cifar10_datasize": "n_samples", "random_teacher_datasize_digits": "n_samples"}


def _dotted(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


@pytest.mark.parametrize("space", sorted(FULL))
def test_space_parses_and_validates_every_trial(space, tmp_path):
    from orchestrator.space.candidates import candidates
    from trainables.runtime.trainable import get_trainable

    path = os.path.join(SPACES, f"{space}.yaml")
    spec = load_spec(path, local_data_overrides(path, str(tmp_path)))
    trials, want = FULL[space]
    assert spec.trainable == "dino" and spec.expected_trials() == trials
    assert spec.resources.gpus_per_worker == 0
    with open(path) as f:
        params = yaml.safe_load(f)["params"]
    for key, value in want.items():
        assert _dotted(params, key) == value, (space, key)
    model = get_trainable("dino").params_model
    configs = [c.config for c in candidates(spec, combine=True)]
    assert len(configs) == trials
    for config in configs:
        model.model_validate(config)
    if space in STUDIES:  # the studied key times the teacher seeds
        assert set(spec.domains) == {STUDIES[space], "teacher_init_seed"}
        assert len(spec.domains[STUDIES[space]].args) >= 2


def test_each_full_space_names_a_small_variant_that_exists():
    for space in FULL:
        with open(os.path.join(SPACES, f"{space}.yaml")) as f:
            header = f.read().split("\nname:")[0]
        if "digits" in space:
            continue
        words = [w.strip("().,:;") for w in header.split()]
        named = [w for w in words if w.startswith("search_spaces/") and w.endswith("digits.yaml")]
        assert named, f"{space} names no small variant"
        assert all(os.path.isfile(os.path.join(REPO, n)) for n in named), named


def _flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and key not in ("loss_params", "dataset_kwargs"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("full", sorted(k for k, v in DIGITS_OF.items() if v not in FAMILY_ONLY))
def test_digits_variant_is_the_full_recipe_but_for_the_shrunk_keys(full):
    spaces = {}
    for name in (full, DIGITS_OF[full]):
        with open(os.path.join(SPACES, f"{name}.yaml")) as f:
            spaces[name] = yaml.safe_load(f)
    big, small = (_flat(spaces[n]["params"]) for n in (full, DIGITS_OF[full]))
    differ = {k for k in big.keys() | small.keys() if not _same(big.get(k), small.get(k))}
    assert differ <= SHRUNK, (full, sorted(differ - SHRUNK))
    assert small["dataset"] == "digits" and small["encoder"] == big["encoder"]
    assert spaces[full]["search"] == spaces[DIGITS_OF[full]]["search"]
    with open(os.path.join(SPACES, f"{full}.yaml")) as f:
        assert f"search_spaces/{DIGITS_OF[full]}.yaml" in f.read().split("\nname:")[0]


@pytest.mark.slow
@pytest.mark.parametrize("space", sorted(set(DIGITS_OF.values()) - FAMILY_ONLY))
def test_digits_variant_trains_and_its_probes_learn(space, one_torch_thread):
    """One trial of each variant, cut to 2 epochs: it trains, and both probes (raw features included,
    the reason for the variants' probe budget) beat chance on digits (10 classes) by far."""
    from orchestrator.space.candidates import candidates
    from trainables.data import load_dataset
    from trainables.dino.loop import train_dino
    from trainables.dino.params import DinoParams
    from trainables.runtime.session import LocalSession

    spec = load_spec(os.path.join(SPACES, f"{space}.yaml"), [])
    config = dict(next(candidates(spec, combine=True)).config)
    config.update(epochs=2, warmup_epochs=0, probe_every=2)
    p = DinoParams.model_validate(config)
    session = LocalSession()
    train_dino(p, load_dataset("digits", seed=p.split_seed), session)
    last = session.history[-1]
    assert len(session.history) == 2 and math.isfinite(last["train_loss"])
    assert last["knn_acc"] > 0.6 and last["linear_acc"] > 0.5 and last["linear_acc_normalized"] > 0.6, last


@pytest.mark.parametrize("space", ["random_teacher_cifar10_v3", "random_teacher_cifar10_dino",
                                   "random_teacher_locality_digits", "random_teacher_datasize_digits"])
def test_dry_run(space, tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    # run_sweep.py's main in this process, from the repository root as before: a fresh interpreter
    # spent most of its seconds importing torch, Ray and MLflow.
    monkeypatch.chdir(REPO)
    rc = cli.main([os.path.join(SPACES, f"{space}.yaml"), "--dry-run", "--storage-path", str(tmp_path / "runs"),
                   "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-2000:] + err[-2000:]
    assert f"trials: {FULL[space][0]} " in out


# --- the plots hook ---------------------------------------------------------------------------

def _frame(key: str, values, seeds, knn, linear, teacher_knn, teacher_linear, status=None):
    return pd.DataFrame({
        "status": status or ["completed"] * len(values),
        f"param.{key}": values, "param.teacher_init_seed": seeds,
        "knn_acc": knn, "linear_acc": linear, "test_knn_acc": knn,
        "teacher_knn_acc": teacher_knn, "teacher_linear_acc": teacher_linear,
    })


def _data(frame, keys):
    from trainables.runtime.vocabulary import ReportData

    return ReportData(frame=frame, rows=[], metric="knn_acc", mode="max", keys=keys, param_prefix="param.")


def test_locality_stats_are_mean_and_sample_std_over_seeds():
    from trainables.dino.report import curve_stats, reference_stats

    frame = _frame("student_init_alpha", [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
                   [0, 1, 2] * 3,
                   knn=[0.50, 0.52, 0.54, 0.45, 0.47, 0.49, 0.40, 0.40, 0.40],
                   linear=[0.60, 0.62, 0.64, 0.55, 0.50, 0.60, 0.30, 0.35, 0.40],
                   teacher_knn=[0.44, 0.46, 0.45] * 3, teacher_linear=[0.5, 0.5, 0.5] * 3)
    knn = curve_stats(frame, "param.student_init_alpha", "knn_acc")
    assert list(knn) == [0.0, 0.5, 1.0]
    assert knn[0.0][0] == pytest.approx(0.52) and knn[0.0][1] == pytest.approx(0.02) and knn[0.0][2] == 3
    assert knn[0.5][0] == pytest.approx(0.47) and knn[0.5][1] == pytest.approx(0.02)
    assert knn[1.0] == (pytest.approx(0.40), pytest.approx(0.0), 3)
    linear = curve_stats(frame, "param.student_init_alpha", "linear_acc")
    assert linear[0.5][0] == pytest.approx(0.55) and linear[0.5][1] == pytest.approx(0.05)
    assert linear[1.0][0] == pytest.approx(0.35) and linear[1.0][1] == pytest.approx(0.05)
    mean, std = reference_stats(frame, "teacher_knn_acc")
    assert mean == pytest.approx(0.45) and std == pytest.approx(np.std([0.44, 0.46, 0.45] * 3, ddof=1))


def test_failed_and_nan_trials_are_left_out_and_a_single_seed_has_std_0():
    from trainables.dino.report import curve_stats

    frame = _frame("n_samples", [64, 64, 256, 256], [0, 1, 0, 1], knn=[0.8, float("nan"), 0.9, 0.1],
                   linear=[0.7, 0.7, 0.7, 0.7], teacher_knn=[0.5] * 4, teacher_linear=[0.5] * 4,
                   status=["completed", "completed", "completed", "error"])
    stats = curve_stats(frame, "param.n_samples", "knn_acc")
    assert stats == {64.0: (pytest.approx(0.8), 0.0, 1), 256.0: (pytest.approx(0.9), 0.0, 1)}


def _drawn(fig):
    """(x, y, yerr) of the student's error-bar line and the teacher's horizontal line, per panel."""
    out = []
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        student = next(c for c in ax.containers if c.get_label() == "student").lines[0]
        teacher = lines["random teacher"]
        out.append((ax.get_ylabel(), list(student.get_xdata()), list(student.get_ydata()),
                    float(teacher.get_ydata()[0])))
    return out


@pytest.mark.parametrize("key,name", [("student_init_alpha", "dino_locality.png"), ("n_samples", "dino_data_size.png")])
def test_plots_hook_writes_a_png_with_the_means_and_the_teacher_line(key, name, tmp_path):
    from trainables.dino.report import PLOTS
    from trainables.runtime.trainable import get_trainable

    assert get_trainable("dino").vocabulary.plots is not None and name in get_trainable("dino").vocabulary.plots
    values = [0.0, 0.0, 1.0, 1.0] if key == "student_init_alpha" else [100, 100, 1000, 1000]
    frame = _frame(key, values, [0, 1, 0, 1], knn=[0.6, 0.7, 0.3, 0.5], linear=[0.8, 0.9, 0.4, 0.4],
                   teacher_knn=[0.4, 0.5, 0.4, 0.5], teacher_linear=[0.6, 0.7, 0.6, 0.7])
    fig = PLOTS[name](_data(frame, [key, "teacher_init_seed"]))
    assert fig is not None
    (knn_label, xs, knn_means, knn_teacher), (lin_label, _, lin_means, lin_teacher) = _drawn(fig)
    assert "kNN" in knn_label and "linear" in lin_label
    assert xs == [float(v) for v in sorted(set(values))]
    assert knn_means == pytest.approx([0.65, 0.4]) and lin_means == pytest.approx([0.85, 0.4])
    assert knn_teacher == pytest.approx(0.45) and lin_teacher == pytest.approx(0.65)
    # the error bars are ± the sample std: 0.0707 and 0.1414 for kNN
    bars = next(c for c in fig.axes[0].containers if c.get_label() == "student").lines[2][0]
    half = sorted(float(abs(seg[1][1] - seg[0][1]) / 2) for seg in bars.get_segments())
    assert half == pytest.approx(sorted([np.std([0.6, 0.7], ddof=1), np.std([0.3, 0.5], ddof=1)]))
    out = tmp_path / name
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the other study's figure has nothing to show
    other = [n for n in PLOTS if n != name][0]
    assert PLOTS[other](_data(frame, [key, "teacher_init_seed"])) is None


def test_plots_hook_is_silent_without_a_study_key_or_with_one_value():
    from trainables.dino.report import PLOTS

    frame = _frame("student_init_alpha", [0.5, 0.5], [0, 1], knn=[0.5, 0.6], linear=[0.5, 0.6],
                   teacher_knn=[0.4, 0.4], teacher_linear=[0.4, 0.4])
    assert all(build(_data(frame, ["student_init_alpha", "teacher_init_seed"])) is None for build in PLOTS.values())
    assert all(build(_data(frame, ["teacher_init_seed"])) is None for build in PLOTS.values())


def test_sweep_figures_include_the_dino_plot():
    from orchestrator.reports.plots import sweep_figures
    from trainables.runtime.trainable import get_trainable

    frame = _frame("student_init_alpha", [0.0, 1.0], [0, 0], knn=[0.5, 0.4], linear=[0.6, 0.5],
                   teacher_knn=[0.45, 0.45], teacher_linear=[0.55, 0.55])
    figures = sweep_figures(frame, [], "knn_acc", "max", ["student_init_alpha", "teacher_init_seed"], set(),
                            get_trainable("dino").vocabulary)
    assert "dino_locality.png" in figures and "dino_data_size.png" not in figures


# --- end to end (slow) --------------------------------------------------------------------------

@pytest.mark.slow
def test_digits_locality_sweep_logs_the_figure_to_the_parent_run(tmp_path):
    import mlflow

    space = os.path.join(SPACES, "random_teacher_locality_digits.yaml")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_sweep.py"), space, "--name", "loc",
         "--set", "search.student_init_alpha={grid: [0.0, 1.0]}", "--set", "search.teacher_init_seed={grid: [0]}",
         "--set", "params.epochs=2", "--set", "params.warmup_epochs=0", "--set", "params.probe_every=1", "--set", "params.probe_epochs=3",
         "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/ml.db")
    exp = client.get_experiment_by_name("random_teacher_locality_digits")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.sweep` = 'loc'")
    parent = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    assert len(parent) == 1
    listed = {a.path for a in client.list_artifacts(parent[0].info.run_id, "plots")}
    assert "plots/dino_locality.png" in listed, listed
    png = client.download_artifacts(parent[0].info.run_id, "plots/dino_locality.png", str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(trials) == 2 and all(math.isfinite(r.data.metrics["knn_acc"]) for r in trials)
