"""Reports on synthetic results: the results table (Parquet/CSV), plots (W2S included), the
seed-style summary, the exported best config, progress lines, compare from MLflow, CLI dispatch."""
import io
import math
import statistics

import numpy as np
import pytest

from orchestrator.reports.rows import TrialRow, format_table, pick_best

PNG = b"\x89PNG\r\n\x1a\n"


def w2s_rows() -> list[TrialRow]:
    """A superalignment sweep: rate x threshold grid, two seeds, one errored and one diverged trial."""
    rng = np.random.default_rng(0)
    rows = []
    i = 0
    for rate in (0.1, 0.3, 0.5):
        for threshold in (0.6, 0.9):
            for seed in (0, 1):
                weak, strong = 0.70 + 0.01 * seed, 0.90
                w2s = weak + (strong - weak) * (0.2 + rate) * threshold + rng.normal(0, 0.002)
                metrics = {"epoch": 10, "weak_acc": weak, "strong_acc": strong, "w2s_acc": w2s,
                           "pgr": (w2s - weak) / (strong - weak), "val_acc": w2s, "trial_id": f"t{i:02d}"}
                history = [{"epoch": e, "w2s_acc": w2s * e / 10, "train_loss": 1.0 / e} for e in range(1, 11)]
                rows.append(TrialRow(trial_id=f"t{i:02d}", params={"loss_params.rate": rate,
                                                                  "loss_params.threshold": threshold, "seed": seed},
                                     metrics=metrics, status="completed", duration_s=3.0 + i,
                                     config={"loss": "superalign", "seed": seed, "epochs": 10}, history=history))
                i += 1
    rows[3].status, rows[3].metrics = "error", {"trial_id": "t03"}
    rows[3].history, rows[3].error = [], "RuntimeError: boom"
    rows[5].status = "diverged"
    return rows


KEYS = ["loss_params.rate", "loss_params.threshold", "seed"]


def test_results_frame_round_trips_through_parquet_and_csv():
    import pandas as pd

    from orchestrator.reports.table import frame_to_csv, frame_to_parquet, rows_to_frame, status_counts

    rows = w2s_rows()
    rows[0].params["loss_params.rate"] = "auto"  # mixed types must still store
    frame = rows_to_frame(rows, KEYS, "val_acc")
    back = pd.read_parquet(io.BytesIO(frame_to_parquet(frame)))
    assert list(back.columns[:3]) == ["trial_id", "status", "duration_s"]
    assert "param.loss_params.rate" in back and "param.seed" in back and back.columns[-1] == "error"
    assert len(back) == 12 and back.loc[3, "status"] == "error" and math.isnan(back.loc[3, "pgr"])
    assert back.loc[3, "error"] == "RuntimeError: boom"
    assert back.loc[1, "pgr"] == pytest.approx(rows[1].metrics["pgr"])
    assert list(back["param.loss_params.rate"][:2]) == ["auto", "0.1"]
    csv = pd.read_csv(io.StringIO(frame_to_csv(frame)))
    assert csv["duration_s"].tolist() == [3.0 + i for i in range(12)]
    # an unknown status (added by another module) is counted, after the known ones
    assert status_counts(r.status for r in rows) == {"completed": 10, "diverged": 1, "error": 1}
    assert status_counts(["completed", "weird", "error"]) == {"completed": 1, "error": 1, "weird": 1}


def test_text_table_shows_duration_and_unknown_status():
    rows = w2s_rows()
    table = format_table(rows, "val_acc", ["pgr"], KEYS)
    lines = table.splitlines()
    assert lines[0].split()[-2:] == ["time", "status"]
    assert lines[2 + 5].endswith("diverged") and " 8s " in lines[2 + 5]


def _axes_hlines(ax) -> list[float]:
    return sorted(round(float(line.get_ydata()[0]), 6) for line in ax.get_lines()
                  if len(set(np.asarray(line.get_ydata(), dtype=float))) == 1)


def test_w2s_plots_have_weak_and_strong_reference_lines():
    from orchestrator.reports.plots import png_bytes, sweep_figures
    from orchestrator.reports.table import rows_to_frame

    from trainables.runtime.trainable import get_trainable

    rows = w2s_rows()
    frame = rows_to_frame(rows, KEYS, "pgr")
    figs = sweep_figures(frame, rows, "pgr", "max", KEYS, set(), get_trainable("w2s_probe").vocabulary)
    assert set(figs) == {"metric_vs_params.png", "learning_curves.png", "w2s_pgr.png", "w2s_pgr_map.png"}
    fig = figs["w2s_pgr.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # two rows (accuracy, PGR) x two searched params (seed is not plotted against)
    assert [ax.get_xlabel() for ax in axes] == ["loss_params.rate", "loss_params.threshold"] * 2 or \
        sorted(ax.get_xlabel() for ax in axes) == sorted(["loss_params.rate", "loss_params.threshold"] * 2)
    weak = statistics.fmean(r.metrics["weak_acc"] for r in rows if "weak_acc" in r.metrics)
    acc_axes = [ax for ax in axes if ax.get_ylabel() == "w2s_acc"]
    pgr_axes = [ax for ax in axes if ax.get_ylabel().startswith("PGR")]
    assert len(acc_axes) == 2 and len(pgr_axes) == 2
    for ax in acc_axes:
        assert _axes_hlines(ax) == [round(weak, 6), 0.9]
    for ax in pgr_axes:
        assert _axes_hlines(ax) == [0.0, 1.0]
    # every trial with a metric is a point, the errored one is not
    points = sum(len(c.get_offsets()) for c in pgr_axes[0].collections)
    assert points == 11 + 1  # 11 trials + the best-trial star
    for name, f in figs.items():
        data = png_bytes(f)
        assert data.startswith(PNG) and len(data) > 10_000, name


def test_plots_without_w2s_metrics_skip_the_w2s_figures():
    from orchestrator.reports.plots import sweep_figures
    from orchestrator.reports.table import rows_to_frame

    rows = w2s_rows()
    for r in rows:
        for k in ("pgr", "weak_acc"):
            r.metrics.pop(k, None)
    from trainables.runtime.trainable import get_trainable

    figs = sweep_figures(rows_to_frame(rows, KEYS, "val_acc"), rows, "val_acc", "max", KEYS, {"loss_params.rate"},
                         get_trainable("w2s_probe").vocabulary)
    assert set(figs) == {"metric_vs_params.png", "learning_curves.png"}
    curves = figs["learning_curves.png"].axes[0]
    colored = [line for line in curves.get_lines() if line.get_label() and not line.get_label().startswith("_")]
    assert len(colored) == 5  # the top 5 trials


def method_rows() -> list[TrialRow]:
    """Two losses x two learning rates x three seeds; val decides the config, test is top-1."""
    rows = []
    table = {("kd", 0.1): 0.90, ("kd", 0.01): 0.85, ("ce", 0.1): 0.80, ("ce", 0.01): 0.82}
    for (loss, lr), base in table.items():
        for seed in (0, 1, 2):
            val, test = base + 0.01 * seed, base - 0.02 + 0.005 * seed * seed
            tid = f"{loss}-{lr}-{seed}"
            rows.append(TrialRow(trial_id=tid, params={"loss": loss, "lr": lr, "seed": seed},
                                 metrics={"val_acc": val, "test_acc": test, "epoch": 5}, status="completed",
                                 config={"teacher": {"model": "cnn"}, "student": "mlp", "loss": loss, "lr": lr,
                                         "seed": seed, "epochs": 5}))
    return rows


def test_seed_summary_picks_best_config_per_method_and_averages_seeds():
    from orchestrator.reports.summary import covers_several, format_summary, summarize
    from trainables.runtime.trainable import get_trainable

    rows = method_rows()
    distill = get_trainable("distill").vocabulary
    entries = summarize(rows, ["loss", "lr", "seed"], "val_acc", "max", distill)
    assert covers_several(entries)
    by_method = {e.group["method"]: e for e in entries}
    assert set(by_method) == {"kd", "ce"}
    assert by_method["kd"].hyperparams == {"lr": 0.1} and by_method["ce"].hyperparams == {"lr": 0.01}
    kd_tests = np.array([0.90 - 0.02 + 0.005 * s * s for s in (0, 1, 2)])
    assert by_method["kd"].top1_mean == pytest.approx(kd_tests.mean())
    assert by_method["kd"].top1_std == pytest.approx(kd_tests.std(ddof=1))
    assert by_method["kd"].seeds == 3 and by_method["kd"].configs_tried == 2
    assert by_method["kd"].group == {"teacher": "cnn", "student": "mlp", "method": "kd"}
    text = format_summary(entries)
    assert f"{kd_tests.mean():.4f} ± {kd_tests.std(ddof=1):.4f} (n=3)" in text
    # one method, one seed: nothing to summarise
    single = summarize(rows[:1], ["loss", "lr", "seed"], "val_acc", "max", distill)
    assert not covers_several(single)


def test_exported_best_config_is_a_valid_fixed_search_space(tmp_path):
    import yaml

    from orchestrator.reports.export import best_space_yaml
    from orchestrator.space.spec import load_spec, parse_spec

    spec = load_spec("search_spaces/quickstart.yaml")
    config = {**spec.fixed_config(), "lr": 0.0421, "loss_params": {"temperature": 4.0, "kd_weight": 0.7},
              "workers": 2}
    best = TrialRow(trial_id="abc_00003", params={}, metrics={"val_acc": 0.97, "epoch": 20}, status="completed",
                    config=config)
    text = best_space_yaml(spec, config, best, "qs")
    raw = yaml.safe_load(text)
    assert raw["num_samples"] == 1 and raw["scheduler"] == {"type": "fifo"} and raw["control"] == {"enabled": False}
    assert "search" not in raw and "points_to_evaluate" not in raw and "time_budget_s" not in raw
    assert raw["resources"]["workers"] == 2 and "workers" not in raw["params"]
    assert raw["params"]["seed"] == 0 and raw["params"]["momentum"] == 0.9  # defaults written out
    again = parse_spec(text, "best_config.yaml")
    assert again.domains == {} and again.expected_trials() == 1
    assert again.fixed_config()["lr"] == 0.0421 and again.fixed_config()["workers"] == 2
    # a best trial stopped by the scheduler is re-run to the same epoch, on the same lr schedule
    best.status, best.metrics["epoch"] = "stopped_early", 10
    raw = yaml.safe_load(best_space_yaml(spec, config, best, "qs"))
    assert raw["stop"]["max_iterations"] == 10 and raw["params"]["epochs"] == 20


class FakeTrial:
    def __init__(self, trial_id, config, status="RUNNING", last_result=None):
        self.trial_id, self.config, self.status, self.last_result = trial_id, config, status, last_result or {}


def test_progress_lines_count_outcomes_and_estimate_eta(capsys, monkeypatch):
    from orchestrator.run import progress as progress_mod
    from orchestrator.run.progress import ProgressPrinter, estimate_eta

    assert estimate_eta([], [1.0], 3) is None
    # 2 pending at mean 10s + one running 4s in (6s left), over 1 running trial
    assert estimate_eta([8.0, 12.0], [4.0], 2) == pytest.approx(26.0)
    assert estimate_eta([10.0], [4.0, 20.0], 0) == pytest.approx((6.0 + 1.0) / 2)

    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "time", lambda: clock[0])
    p = ProgressPrinter("val_acc", "max", total=4, budget_key="epochs", keys=["lr"], interval_s=30)
    # As Tune does: a trial is still PENDING when on_trial_start runs, RUNNING just after.
    a = FakeTrial("a", {"lr": 0.05, "epochs": 10}, status="PENDING")
    b = FakeTrial("b", {"lr": 0.2, "epochs": 10}, status="PENDING")
    trials = [a, b]
    p.on_trial_start(0, trials, a)
    a.status = "RUNNING"
    p.on_trial_start(0, trials, b)
    b.status = "RUNNING"
    clock[0] += 10
    p.on_trial_result(0, trials, a, {"epoch": 10, "val_acc": 0.9})
    a.status = "TERMINATED"
    p.on_trial_complete(0, trials, a)
    clock[0] += 5
    p.on_trial_result(0, trials, b, {"epoch": 3, "val_acc": 0.5})
    b.status = "ERROR"
    p.on_trial_error(0, trials, b)
    c = FakeTrial("c", {"lr": 0.1, "epochs": 10})
    trials.append(c)
    p.on_trial_start(0, trials, c)
    p.outcomes["diverged"] = 1  # a status another module adds
    clock[0] += 31
    p.on_step_end(0, trials)
    p.on_step_end(0, trials)  # within the interval again: no second line
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  start    a: lr=0.05 (running 1)"
    assert out[1] == "  start    b: lr=0.2 (running 2)"
    assert out[2].startswith("  [  1/4] a completed at epoch 10 in 10s: val_acc 0.9000 | best 0.9000 (a)")
    assert out[3].startswith("  [  2/4] b error at epoch 3 in 15s: val_acc 0.5000 | best 0.9000 (a)")
    status = [line for line in out if line.startswith("  status")]
    assert len(status) == 1
    # 3 finished (one counted by hand), 1 running, 0 pending; mean 12.5s, c ran 31s > mean
    assert status[0].startswith("  status   1 running, 3/4 finished (1 completed, 1 diverged, 1 error), 0 pending")
    assert "best val_acc 0.9000 (a)" in status[0] and "eta 1s" in status[0]


COMPARE_SPACE = """
name: cmp
trainable: distill
params: {student: mlp_tiny, epochs: 2, lr: 0.05}
search:
  loss: {grid: [kd, ce]}
  seed: {grid: [0, 1]}
"""


def test_compare_rebuilds_from_mlflow_runs(tmp_path, capsys):
    import pandas as pd
    import yaml

    from orchestrator.reports.compare import compare_sweeps
    from orchestrator.reports.publish import load_sweep
    from orchestrator.space.spec import parse_spec
    from orchestrator.store.tracking import PARENT_TAG, Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(COMPARE_SPACE, "compare.yaml")
    tracker = Tracker(uri, spec.experiment_name)
    tracker.ensure_experiment()
    values = {}
    for sweep, offset in (("sa", 0.0), ("sb", 0.05)):
        parent, _ = tracker.parent_run(sweep, spec.resolved_dict(), yaml.safe_dump(spec.resolved_dict()))
        for i, (loss, seed) in enumerate([("kd", 0), ("kd", 1), ("ce", 0), ("ce", 1)]):
            acc = 0.8 + offset + (0.05 if loss == "kd" else 0.0) + 0.01 * seed
            values[(sweep, loss, seed)] = acc
            run = tracker.client.create_run(tracker.experiment_id, run_name=f"{sweep}/t{i}", tags={
                PARENT_TAG: parent, "w2s.sweep": sweep, "w2s.role": "trial", "w2s.trial_id": f"{sweep}_{i}",
                "w2s.outcome": "completed"})
            tracker.log_params(run.info.run_id, {"loss": loss, "seed": seed, "lr": 0.05, "teacher.model": "cnn",
                                                 "student": "mlp_tiny", "epochs": 2})
            for epoch in (1, 2):
                tracker.log_metrics(run.info.run_id, {"val_acc": acc * epoch / 2, "test_acc": acc - 0.01,
                                                      "epoch": epoch, "trial_time_s": 1.5 * epoch}, step=epoch)
    stored = load_sweep("sa", str(tmp_path / "nothing-here"), uri)
    assert stored.source.startswith("MLflow child runs") and len(stored.rows) == 4
    row = next(r for r in stored.rows if r.trial_id == "sa_0")
    assert row.params == {"loss": "kd", "seed": 0} and row.duration_s == 3.0 and row.status == "completed"
    assert [h["val_acc"] for h in row.history] == pytest.approx([values[("sa", "kd", 0)] / 2, values[("sa", "kd", 0)]])
    assert pick_best(stored.rows, "val_acc", "max").trial_id == "sa_1"

    compare_sweeps(["sa", "sb"], str(tmp_path / "storage"), uri)
    out = capsys.readouterr().out
    kd_b = [values[("sb", "kd", s)] - 0.01 for s in (0, 1)]
    assert f"{statistics.fmean(kd_b):.4f} ± {statistics.stdev(kd_b):.4f} (n=2)" in out
    csv = pd.read_csv(tmp_path / "storage" / "comparisons" / "sa__sb" / "comparison.csv")
    assert sorted(zip(csv["sweep"], csv["method"])) == [("sa", "ce"), ("sa", "kd"), ("sb", "ce"), ("sb", "kd")]
    assert (tmp_path / "storage" / "comparisons" / "sa__sb" / "comparison.png").read_bytes().startswith(PNG)


def test_a_fused_trials_members_rebuilt_from_mlflow_are_rows_of_their_own(tmp_path):
    """Each member of a fused trial has a child run tagged with the trial and its index
    (``w2s.probe``); rebuilt from MLflow, each is its own row (``<trial>/p<k>``), as from Tune."""
    import yaml

    from orchestrator.reports.publish import load_sweep
    from orchestrator.space.spec import parse_spec
    from orchestrator.store.tracking import PARENT_TAG, TAG_PROBE, Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(COMPARE_SPACE, "compare.yaml")
    tracker = Tracker(uri, spec.experiment_name)
    tracker.ensure_experiment()
    parent, _ = tracker.parent_run("sf", spec.resolved_dict(), yaml.safe_dump(spec.resolved_dict()))
    for k, acc in enumerate((0.9, 0.7)):
        run = tracker.client.create_run(tracker.experiment_id, run_name=f"sf/t0/p{k}", tags={
            PARENT_TAG: parent, "w2s.sweep": "sf", "w2s.role": "trial", "w2s.trial_id": "sf_0", TAG_PROBE: str(k),
            "w2s.outcome": "completed"})
        tracker.log_params(run.info.run_id, {"loss": "kd", "seed": k, "lr": 0.05})
        tracker.log_metrics(run.info.run_id, {"val_acc": acc, "epoch": 1}, step=1)
    stored = load_sweep("sf", str(tmp_path / "nothing-here"), uri)
    assert [(r.label, r.metrics["val_acc"]) for r in stored.rows] == [("sf_0/p0", 0.9), ("sf_0/p1", 0.7)]
    assert pick_best(stored.rows, "val_acc", "max").label == "sf_0/p0"


def test_cli_dispatches_report_and_compare(tmp_path, capsys):
    from orchestrator.cli import build_parser, main

    assert build_parser().parse_args([]).space is None  # `run_sweep.py` alone still runs the quickstart
    assert build_parser().parse_args(["x.yaml", "--dry-run"]).space == "x.yaml"
    assert "run_sweep.py report NAME" in build_parser().format_help()
    code = main(["report", "missing", "--storage-path", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert code == 2 and "no sweep named 'missing'" in err
    assert not (tmp_path / "m.db").exists()  # a report never creates a tracking store
    assert main(["compare", "only-one", "--storage-path", str(tmp_path)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compare", "a", "b", "a", "--storage-path", str(tmp_path)]) == 2
    assert "compare: sweep 'a' is named twice; name each sweep once" in capsys.readouterr().err


def test_terminal_table_fits_sorts_and_folds_constants():
    """Issue 19: the printed table fits 100 columns, is sorted best first with the top 10 (all with
    top=None), shows each constant once above it, and has no duplicated header."""
    from orchestrator.reports.terminal import searched_yaml, sort_rows, terminal_table

    rows = w2s_rows()
    long_keys = KEYS + ["weak.model", "strong.model"]
    for r in rows:
        r.params.update({"weak.model": "resnet18_very_long_model_name_x", "strong.model": "vit_base_patch14_dinov2"})
    extra = ["weak_acc", "strong_acc", "pgr", "val_acc"]
    table = terminal_table(rows, "w2s_acc", "max", extra, long_keys, width=100)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(line for line in lines if line.startswith("trial "))
    above = " ".join(lines[:lines.index(header)])
    assert above.startswith("same for all: ") and "strong_acc=0.9000" in above and "epoch=10" in above
    assert "strong_acc" not in header.split() and "epoch" not in header.split()
    assert len(header.split()) == len(set(header.split()))
    body = lines[lines.index(header) + 2:]
    shown = [line.split()[0] for line in body if line[:2] == "t0" or line[:2] == "t1"]
    best_first = [r.label for r in sort_rows(rows, "w2s_acc", "max")]
    assert shown == best_first[:10]
    assert "top 10 of 12" in table and "--all" in table
    # errored and diverged trials sort last
    assert set(best_first[-2:]) == {"t03", "t05"}
    everything = terminal_table(rows, "w2s_acc", "max", extra, long_keys, width=100, top=None)
    assert sum(line[:2] in ("t0", "t1") for line in everything.splitlines()) == 12
    narrow = terminal_table(rows, "w2s_acc", "max", extra, long_keys, width=60)
    assert max(len(line) for line in narrow.splitlines()) <= 60 and "not shown for width:" in " ".join(narrow.splitlines())
    assert searched_yaml({"loss_params": {"rate": 0.3}, "seed": 1, "lr": 2}, ["loss_params.rate", "seed"]) \
        == "loss_params.rate: 0.3\nseed: 1"


def test_list_shows_each_sweep_with_its_state_trials_and_best(tmp_path, capsys):
    """Issue 19: `run_sweep.py list` names the sweeps under a storage path; a sweep whose driver
    died while its status said running is listed as interrupted, as --resume treats it."""
    import json

    from orchestrator.cli import main
    from orchestrator.store import layout

    space = "name: s\ntrainable: distill\nparams: {student: mlp_tiny, epochs: 2}\nmetric: val_acc\nmode: max\n"
    best = {}
    for name, status, values in (("done", "finished", [0.5, 0.7]), ("cut", "running", [0.6])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / layout.SPEC_FILE).write_text(space)
        # pid 0 on this host: no live driver wrote it
        (folder / layout.STATUS_FILE).write_text(json.dumps({"status": status, "updated": 1.0e9, "pid": 0,
                                                             "host": "elsewhere"}))
        for i, value in enumerate(values):
            trial = folder / f"trial_x_{i:05d}"
            trial.mkdir()
            (trial / "result.json").write_text(json.dumps({"epoch": 1, "val_acc": value / 2}) + "\n"
                                               + json.dumps({"epoch": 2, "val_acc": value}) + "\n")
        best[name] = max(values)
    (tmp_path / "cache").mkdir()  # not a sweep
    assert main(["list", "--storage-path", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.split() and line.split()[0] in best}
    assert rows["done"][1:5] == ["finished", "2", "val_acc", f"{best['done']:.4f}"]
    assert rows["cut"][1:5] == ["interrupted", "1", "val_acc", f"{best['cut']:.4f}"]
    assert "cache" not in rows
    assert main(["list", "--storage-path", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_loss_curves_flag_reaches_the_figures(monkeypatch, tmp_path):
    """`report NAME --loss-curves` asks for the loss panel, which is off by default."""
    from orchestrator import cli
    from orchestrator.reports import publish

    seen = {}
    monkeypatch.setattr(publish, "report_sweep", lambda name, storage, uri, **kw: seen.update(name=name, **kw))
    for argv, want in ((["report", "s1"], False), (["report", "s1", "--loss-curves"], True)):
        assert cli.main([*argv, "--storage-path", str(tmp_path)]) == 0
        assert seen == {"name": "s1", "loss_curves": want}
