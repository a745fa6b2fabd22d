"""The researcher's view on constructed results: the paired reference comparison and its interval,
hyperparameter importance, the headline figures' numbers, and the plot fixes (robust y-limits, seed
and workers not drawn as hyperparameters)."""
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.reports.rows import TrialRow

PNG = b"\x89PNG\r\n\x1a\n"


# ---- paired comparison ------------------------------------------------------------------------------


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    from orchestrator.reports.paired import paired_verdict

    # The seed effect (+-0.05) is large, the best-minus-control difference is steady: unpaired, the
    # two spreads overlap; paired, the interval is narrow and excludes 0.
    seed_effect = {0: -0.05, 1: 0.0, 2: 0.05, 3: 0.02}
    diffs = {0: 0.010, 1: 0.012, 2: 0.008, 3: 0.011}
    control = {s: 0.80 + e for s, e in seed_effect.items()}
    best = {s: control[s] + diffs[s] for s in seed_effect}
    comp = paired_verdict("test_acc", best, control, "its no-teacher control")
    d = list(diffs.values())
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    iv = comp.paired.interval
    assert iv.n == 4 and iv.mean == pytest.approx(statistics.fmean(d))
    assert (iv.low, iv.high) == pytest.approx((statistics.fmean(d) - half, statistics.fmean(d) + half))
    assert "the best config beat its no-teacher control" in comp.verdict and "n=4 seeds" in comp.verdict
    assert comp.metrics()["reference_paired_n"] == 4


def test_paired_comparison_pairs_by_seed_and_refuses_to_call_two_seeds():
    from orchestrator.reports.paired import paired_verdict

    two = paired_verdict("acc", {0: 0.9, 1: 0.95}, {0: 0.8, 1: 0.82}, "its control")
    assert "too few seeds to call" in two.verdict and "clear margin" not in two.verdict
    # a control that finished on other seeds only: nothing is paired, so nothing is claimed
    apart = paired_verdict("acc", {0: 0.9, 1: 0.95, 2: 0.9}, {5: 0.8, 6: 0.82, 7: 0.8}, "its control")
    assert apart.verdict.startswith("no comparison") and apart.metrics() == {}
    # seed 3 has no control run: left out and said so
    partial = paired_verdict("acc", {0: 0.9, 1: 0.91, 2: 0.92, 3: 0.5}, {0: 0.9, 1: 0.91, 2: 0.92}, "its control")
    assert partial.paired.interval.n == 3 and "1 unpaired run(s) left out" in partial.verdict
    assert "no detectable difference" in partial.verdict


# ---- hyperparameter importance ----------------------------------------------------------------------


def synthetic_sweep(n: int = 40) -> pd.DataFrame:
    """lr alone drives the metric; wd and the loss are noise-free but irrelevant; seed and workers vary."""
    rng = np.random.default_rng(3)
    lr = 10 ** rng.uniform(-4, -1, n)
    return pd.DataFrame({
        "trial_id": [f"t{i:02d}" for i in range(n)], "status": "completed",
        "val_acc": 0.5 + 0.1 * (np.log10(lr) + 4),
        "param.lr": lr, "param.wd": rng.uniform(0, 0.1, n), "param.loss": rng.choice(["kd", "ce", "dkd"], n),
        "param.seed": rng.integers(0, 3, n), "param.workers": rng.choice([1, 2], n)})


def test_importance_ranks_the_one_driving_parameter_first_and_skips_seed_and_workers():
    from orchestrator.reports.importance import param_importance

    frame = synthetic_sweep()
    keys = ["lr", "wd", "loss", "seed", "workers"]
    importance = param_importance(frame, "val_acc", "max", keys, lambda k: f"param.{k}", {"lr"})
    assert list(importance)[0] == "lr"
    assert importance["lr"] > 0.5 and importance["lr"] == max(importance.values())
    assert "seed" not in importance and "workers" not in importance
    again = param_importance(frame, "val_acc", "max", keys, lambda k: f"param.{k}", {"lr"})
    assert again == importance  # the evaluator's seed is fixed


def test_importance_ignores_trials_that_did_not_finish():
    from orchestrator.reports.importance import study_from_frame

    frame = synthetic_sweep(10)
    frame.loc[0, "status"], frame.loc[1, "status"] = "diverged", "error"
    study, params = study_from_frame(frame, "val_acc", "max", ["lr", "seed"], lambda k: f"param.{k}", set())
    assert len(study.trials) == 8 and params == ["lr"]


# ---- headline figures -------------------------------------------------------------------------------


def headline_rows() -> list[TrialRow]:
    """A distillation sweep: two lr values x three seeds; lr 0.1 is the best configuration."""
    rows = []
    for i, (lr, seed) in enumerate((lr, s) for lr in (0.1, 0.01) for s in (0, 1, 2)):
        acc = (0.90 if lr == 0.1 else 0.80) + 0.01 * seed
        rows.append(TrialRow(trial_id=f"t{i}", status="completed", params={"lr": lr, "seed": seed},
                             metrics={"val_acc": acc, "test_acc": acc - 0.005, "teacher_test_acc": 0.95 - 0.001 * seed,
                                      "epoch": 5}, config={"lr": lr, "seed": seed, "epochs": 5}, history=[]))
    return rows


def _spec(trainable: str):
    from orchestrator.space.spec import load_spec

    assert trainable == "distill"
    return load_spec("search_spaces/quickstart.yaml")  # a distill sweep searching lr (and the loss's knobs)


def test_distill_headline_draws_the_means_and_intervals_of_the_frame():
    from orchestrator.reports.headline import build_headline, headline_records
    from orchestrator.reports.paired import paired_verdict
    from orchestrator.reports.publish import report_data
    from orchestrator.reports.rows import vocabulary_of
    from orchestrator.reports.summary import summarize
    from orchestrator.reports.table import rows_to_frame

    spec = _spec("distill")
    rows = headline_rows()
    keys = ["lr", "seed"]
    frame = rows_to_frame(rows, keys, "val_acc")
    entries = summarize(rows, keys, "val_acc", "max", vocabulary_of(spec))
    control = {0: 0.85, 1: 0.86, 2: 0.84}
    comp = paired_verdict("test_acc", {0: 0.895, 1: 0.905, 2: 0.915}, control, "its no-teacher control")
    headline = build_headline(report_data(spec, frame, rows, entries, comp), vocabulary_of(spec))
    drawn = {r["name"]: r for r in headline_records(headline)}
    best = frame[frame["param.lr"] == 0.1]
    expected = {"teacher": best["teacher_test_acc"], "best student (reference runs)": pd.Series([0.895, 0.905, 0.915]),
                "no-teacher control": pd.Series(list(control.values()))}
    assert set(drawn) == set(expected)
    for name, values in expected.items():
        lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert drawn[name]["mean"] == pytest.approx(values.mean())
        assert (drawn[name]["ci_low"], drawn[name]["ci_high"]) == pytest.approx((lo, hi))
        assert drawn[name]["n"] == 3
    # without reference runs, the best configuration's own seeds stand in for the student
    alone = build_headline(report_data(spec, frame, rows, entries, None), vocabulary_of(spec))
    sweep_student = next(r for r in headline_records(alone) if r["role"] == "student")
    assert sweep_student["mean"] == pytest.approx(best["test_acc"].mean()) and sweep_student["n"] == 3
    assert not any(r["role"] == "control" for r in headline_records(alone))
    assert alone.title == ("distillation: teacher and best student on test_acc (no reference runs, so no bar "
                           "for the no-teacher control)")


def test_a_fused_trials_best_member_is_the_headlines_student_not_its_last_member():
    """The members of a fused trial (vectorize: K) share its Tune trial id; each is its own row
    (``probe``). The best configuration is a member, and the headline must draw that member,
    not whichever member of its trial came last."""
    from orchestrator.reports.headline import build_headline, headline_records
    from orchestrator.reports.publish import report_data
    from orchestrator.reports.rows import vocabulary_of
    from orchestrator.reports.summary import summarize
    from orchestrator.reports.table import rows_to_frame

    spec = _spec("distill")
    rows = [TrialRow(trial_id="t0", probe=k, status="completed", params={"lr": lr},
                     metrics={"val_acc": acc, "test_acc": acc - 0.01, "teacher_test_acc": 1.0, "epoch": 4},
                     config={"lr": lr}, history=[])
            for k, (lr, acc) in enumerate(((0.05, 0.99), (0.04, 0.98), (0.17, 0.82)))]
    rows.append(TrialRow(trial_id="t1", status="completed", params={"lr": 0.07}, config={"lr": 0.07}, history=[],
                         metrics={"val_acc": 0.97, "test_acc": 0.96, "teacher_test_acc": 1.0, "epoch": 4}))
    entries = summarize(rows, ["lr"], "val_acc", "max", vocabulary_of(spec))
    assert entries[0].trial_ids == ["t0/p0"]
    data = report_data(spec, rows_to_frame(rows, ["lr"], "val_acc"), rows, entries, None)
    assert [r.label for r in data.best_group] == ["t0/p0"]
    student = next(r for r in headline_records(build_headline(data, vocabulary_of(spec))) if r["role"] == "student")
    assert student["mean"] == pytest.approx(0.98) and student["n"] == 1


def test_headline_renders_png_html_and_table():
    from orchestrator.reports.headline import headline_html, headline_png, headline_table
    from orchestrator.reports.plots import png_bytes
    from trainables.runtime.vocabulary import Bar, Headline

    headline = Headline("constructed", (Bar("kNN accuracy", "student (validation)", (0.3, 0.32, 0.31)),
                                         Bar("kNN accuracy", "random teacher (validation)", (0.2,))),
                        notes=("a note",))
    assert png_bytes(headline_png(headline)).startswith(PNG)
    html = headline_html(headline)
    assert "<html" in html and "student (validation)" in html and "cdn.plot.ly" not in html.split("<body>")[0]
    table = headline_table(headline)
    assert "(one seed)" in table and "a note" in table and "0.3100" in table


def test_w2s_and_dino_headlines_group_per_method_and_per_probe():
    from trainables.dino.report import dino_headline
    from trainables.runtime.vocabulary import ReportData
    from trainables.w2s_probe.report import w2s_headline

    def row(i, **m):
        return TrialRow(trial_id=f"t{i}", status="completed", params={}, metrics=m, config={}, history=[])

    w2s = [row(i, weak_acc=0.7, w2s_acc=0.75 + 0.01 * i, strong_acc=0.9, pgr=(0.05 + 0.01 * i) / 0.2) for i in range(3)]
    data = ReportData(frame=pd.DataFrame(), rows=w2s, metric="w2s_acc", mode="max", keys=[],
                      groups={"superalign": w2s, "naive": w2s[:1]})
    headline = w2s_headline(data)
    assert {b.panel for b in headline.bars} == {"superalign", "naive"}
    pgr = statistics.fmean(r.metrics["pgr"] for r in w2s)
    assert any(n.startswith("PGR superalign: ") and f"{pgr:.3f}" in n for n in headline.notes)
    dino = [row(i, knn_acc=0.3, test_knn_acc=0.29, teacher_knn_acc=0.2, teacher_test_knn_acc=0.21,
                linear_acc=0.4, test_linear_acc=0.41, teacher_linear_acc=0.25, teacher_test_linear_acc=0.26)
            for i in range(2)]
    headline = dino_headline(ReportData(frame=pd.DataFrame(), rows=dino, metric="knn_acc", mode="max", keys=[],
                                        groups={"": dino}))
    assert len(headline.bars) == 8 and {b.panel for b in headline.bars} == {"kNN accuracy", "linear-probe accuracy"}
    assert all(len(b.values) == 2 for b in headline.bars)


# ---- plot fixes -------------------------------------------------------------------------------------


def plotted_frame(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "status": "completed",
                          "val_acc": 0.8 + 0.05 * rng.random(n), "epoch": 20.0,
                          "param.lr": 10 ** rng.uniform(-3, -1, n), "param.epochs": rng.choice([20, 40], n),
                          "param.seed": rng.integers(0, 3, n), "param.workers": rng.choice([1, 2], n)})
    frame.loc[3, ["status", "val_acc"]] = ["diverged", 0.1]  # one run blew up: far below the rest
    frame.loc[5, ["status", "epoch"]] = ["stopped_early", 5.0]
    return frame


def test_a_diverged_trial_does_not_set_the_y_axis_and_is_counted():
    from orchestrator.reports.plots import metric_vs_params

    frame = plotted_frame()
    fig = metric_vs_params(frame, "val_acc", "max", ["lr", "epochs", "seed", "workers"], {"lr"}, {"epochs"})
    normal = frame.loc[frame["status"] != "diverged", "val_acc"]
    for ax in fig.axes[:2]:
        lo, hi = ax.get_ylim()
        assert lo <= normal.min() and hi >= normal.max()  # every finished trial is on the axis
        assert lo > frame.loc[3, "val_acc"]  # the diverged one is not
        assert lo > normal.min() - (normal.max() - normal.min())  # nor does it stretch the axis
    title = " ".join(fig._suptitle.get_text().split())  # wrapped to the figure width
    assert "1 off the axis" in title
    assert "stopped early at epoch" in title
    assert any(t.get_text() == "e5" for ax in fig.axes for t in ax.texts)


def test_seed_and_workers_get_no_panel_and_choices_are_categories():
    from orchestrator.reports.plots import metric_vs_params

    fig = metric_vs_params(plotted_frame(), "val_acc", "max", ["lr", "epochs", "seed", "workers"], {"lr"}, {"epochs"})
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in panels] == ["lr", "epochs"]
    epochs = panels[1]
    assert [t.get_text() for t in epochs.get_xticklabels()] == ["20", "40"]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in epochs.collections if len(c.get_offsets())])
    assert xs.min() >= -0.5 and xs.max() <= 1.5 and len(np.unique(np.round(xs, 6))) > 2  # jittered categories


def test_importance_and_parallel_coordinates_outputs():
    from orchestrator.reports.importance import history_figure, parallel_coordinates_html

    frame = synthetic_sweep(12)
    html = parallel_coordinates_html(frame, "val_acc", "max", ["lr", "loss", "seed"], lambda k: f"param.{k}", {"lr"})
    assert "parcoords" in html and "log10 lr" in html and '"seed"' not in html
    fig = history_figure(frame, "val_acc", "max")
    best_line = next(line for line in fig.axes[0].lines)
    assert best_line.get_ydata()[-1] == pytest.approx(frame["val_acc"].max())


def test_comparison_figure_puts_each_metric_on_its_own_axis_with_a_legend():
    from orchestrator.reports.compare import comparison_figure, metrics_compared
    from orchestrator.reports.summary import MethodEntry

    class Sweep:
        def __init__(self, name):
            self.name = name

    def entry(method, metric, values):
        return MethodEntry(group={"method": method} if method else {}, metric="val", top1_metric=metric,
                           metric_values=values, top1_values=values, hyperparams={}, trial_ids=[], configs_tried=1)

    sweeps = [Sweep("a"), Sweep("b"), Sweep("rt")]
    entries = [[entry("kd", "w2s_acc", [0.9, 0.91, 0.92]), entry("dkd", "w2s_acc", [0.93, 0.92])],
               [entry("kd", "w2s_acc", [0.88, 0.9, 0.89])], [entry(None, "knn_acc", [0.3, 0.32])]]
    assert metrics_compared(entries) == ["w2s_acc", "knn_acc"]
    fig = comparison_figure(sweeps, entries)
    axes = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in axes] == ["w2s_acc (mean over seeds)", "knn_acc (mean over seeds)"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["kd", "dkd"]  # methods on the x-axis
    assert all(ax.get_ylim()[0] == 0 for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "rt"]  # sweeps as colours


def test_interactive_figures_render_offline_in_headless_chromium(tmp_path):
    """The HTML files work with no network (plotly inlined): Chromium draws them, not a blank page."""
    from orchestrator.reports.headline import headline_html
    from orchestrator.reports.importance import parallel_coordinates_html
    from tests.headless_browser import find_chromium, render_html_file
    from trainables.runtime.vocabulary import Bar, Headline

    if find_chromium() is None:
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
    pages = {"parallel_coordinates": parallel_coordinates_html(synthetic_sweep(12), "val_acc", "max", ["lr", "loss"],
                                                               lambda k: f"param.{k}", {"lr"}),
             "headline": headline_html(Headline("constructed", (Bar("acc", "student", (0.9, 0.91, 0.93)),
                                                                Bar("acc", "control", (0.8, 0.82, 0.81)))))}
    for name, html in pages.items():
        path = tmp_path / f"{name}.html"
        path.write_text(html)
        drawn = render_html_file(str(path), str(tmp_path / f"{name}.png"), ".barlayer path, .parcoords .axis")
        assert drawn > 0.01, (name, drawn)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body><svg class='parcoords'><g class='axis'></g></svg></body></html>")
    assert render_html_file(str(blank), str(tmp_path / "blank.png"), ".parcoords .axis") < 0.001
