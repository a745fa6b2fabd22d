"""Trainables declare their vocabulary; the orchestrator names none of it.

A plugin trainable (``tests/plugins/toy.py``, loaded with ``W2S_PLUGINS`` as users load theirs)
reports ``toy_score`` / ``toy_top1`` / ``toy_loss`` and declares its headline, table columns,
summary identity, learning curves, control label and a figure of its own. Its sweep's table,
summary, plots and reference verdict speak those names, with nothing in ``orchestrator/`` edited;
and no built-in trainable's metric names appear in the orchestrator's code either.
"""
import ast
import csv
import math
import pathlib
import re
import statistics

import numpy as np
import pytest

import tests.plugins.toy  # noqa: F401 - registers the `toy` trainable in this process
from orchestrator.reports.rows import TrialRow
from tests.conftest import REPO
from tests.plugins.toy import TOY_VOCABULARY

TOY_SPACE = """
name: toy
trainable: toy
params: {rounds: 6, lr: 0.5}
search:
  solver: {grid: [gd, heavy_ball]}
  seed: {grid: [0, 1]}
metric: toy_score
mode: max
num_samples: 1
search_alg: {type: random, seed: 0}
scheduler: {type: fifo}
resources: {workers: 1, cpus_per_worker: 1}
control: {enabled: true, seeds: 2, workers: 1}
"""
KEYS = ["solver", "seed"]


def toy_rows(history: bool = True) -> list[TrialRow]:
    """Two solvers x three seeds; heavy_ball is better on validation and on test."""
    rows = []
    for solver, base in (("gd", 0.80), ("heavy_ball", 0.90)):
        for seed in (0, 1, 2):
            score, top1 = base + 0.01 * seed, base - 0.05 + 0.002 * seed * seed
            hist = [{"epoch": e, "toy_top1": top1 * e / 4, "toy_loss": 2.0 / e} for e in range(1, 5)] if history else []
            rows.append(TrialRow(trial_id=f"{solver}-{seed}", params={"solver": solver, "seed": seed},
                                 metrics={"toy_score": score, "toy_top1": top1, "toy_loss": 0.5, "epoch": 4},
                                 status="completed", config={"solver": solver, "seed": seed, "epochs": 4},
                                 history=hist))
    return rows


def toy_spec():
    from orchestrator.space.spec import parse_spec

    return parse_spec(TOY_SPACE, "toy.yaml")


def test_summary_averages_the_declared_headline_over_the_declared_identity():
    from orchestrator.reports.summary import format_summary, summarize, summary_records

    rows = toy_rows()
    entries = summarize(rows, KEYS, "toy_score", "max", TOY_VOCABULARY)
    by_recipe = {e.group["recipe"]: e for e in entries}
    assert set(by_recipe) == {"gd", "heavy_ball"}
    # the identity column names the solver; the solver is not grouped on a second time by its key
    assert all(set(e.group) == {"recipe"} for e in entries)
    tops = [0.85 + 0.002 * s * s for s in (0, 1, 2)]
    assert by_recipe["heavy_ball"].top1_metric == "toy_top1"
    assert by_recipe["heavy_ball"].top1_mean == pytest.approx(statistics.fmean(tops))
    assert by_recipe["heavy_ball"].seeds == 3
    text = format_summary(entries)
    assert text.splitlines()[0].split()[:3] == ["recipe", "top-1", "(toy_top1)"]
    assert f"{statistics.fmean(tops):.4f} ± {statistics.stdev(tops):.4f} (n=3)" in text
    record = summary_records(entries)[0]
    assert {"recipe", "toy_top1_mean", "toy_top1_std", "toy_score_mean"} <= set(record)


def test_summary_without_a_vocabulary_or_a_reported_headline_uses_the_search_metric():
    from orchestrator.reports.summary import summarize
    from trainables.runtime.vocabulary import Vocabulary

    rows = toy_rows()
    plain = summarize(rows, KEYS, "toy_score", "max")
    # no identity declared: the text-valued searched key is the group, under its own name
    assert {tuple(e.group) for e in plain} == {("solver",)} and plain[0].top1_metric == "toy_score"
    for r in rows:
        del r.metrics["toy_top1"]
    assert summarize(rows, KEYS, "toy_score", "max", TOY_VOCABULARY)[0].top1_metric == "toy_score"
    assert Vocabulary().reference_of("m") == "m" and TOY_VOCABULARY.reference_of("m") == "toy_top1"


def test_results_table_shows_the_declared_metrics_that_are_reported():
    from orchestrator.reports.publish import results_table

    rows = toy_rows()
    header = results_table(toy_spec(), rows).splitlines()[0].split()
    assert header == ["trial", "solver", "seed", "toy_score", "toy_top1", "toy_loss", "epoch", "time", "status"]
    for r in rows:
        del r.metrics["toy_loss"]
    assert "toy_loss" not in results_table(toy_spec(), rows).splitlines()[0].split()


def test_learning_curves_use_the_declared_curve_and_loss():
    from orchestrator.reports.plots import learning_curves

    rows = toy_rows()  # the search metric, toy_score, is not in the per-epoch history
    fig = learning_curves(rows, "toy_score", "max", KEYS, TOY_VOCABULARY.curves, TOY_VOCABULARY.loss_curves)
    assert [ax.get_ylabel() for ax in fig.axes] == ["toy_top1", "toy_loss"]
    assert learning_curves(rows, "toy_score", "max", KEYS) is None  # no declared curve: nothing to plot
    bare = learning_curves(rows, "toy_score", "max", KEYS, TOY_VOCABULARY.curves)
    assert [ax.get_ylabel() for ax in bare.axes] == ["toy_top1"]


def test_sweep_figures_include_the_trainables_own_plot():
    from orchestrator.reports.plots import png_bytes, sweep_figures
    from orchestrator.reports.table import rows_to_frame

    rows = toy_rows()
    frame = rows_to_frame(rows, KEYS, "toy_score")
    figs = sweep_figures(frame, rows, "toy_score", "max", KEYS, set(), TOY_VOCABULARY)
    assert set(figs) == {"metric_vs_params.png", "learning_curves.png", "toy_scores.png"}
    ax = figs["toy_scores.png"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("toy_score", "toy_top1")
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(rows)
    assert png_bytes(figs["toy_scores.png"]).startswith(b"\x89PNG")


class FakeResult:
    def __init__(self, role: str, value: float, seed: int = 0):
        from trainables.runtime.runner import CASE_KEY

        self.config = {CASE_KEY: {"role": role, "seed": seed, "config": {}}}
        self.metrics = {"toy_top1": value, "toy_score": 0.0}
        self.error = None


def test_reference_verdict_uses_the_declared_metric_and_control():
    from orchestrator.reports.paired import paired_reference_comparison

    results = [FakeResult("reproduce", 0.9, 0), FakeResult("reproduce", 0.92, 1), FakeResult("control", 0.8, 0),
               FakeResult("control", 0.81, 1)]
    comp = paired_reference_comparison(results, TOY_VOCABULARY.reference_of("toy_score"), TOY_VOCABULARY.control)
    assert comp.best_mean == pytest.approx(0.91) and comp.control_mean == pytest.approx(0.805)
    assert comp.verdict.startswith("best config vs its unsmoothed control on toy_top1: 0.9100 vs 0.8050")
    assert comp.best_by_seed == {0: 0.9, 1: 0.92} and comp.control_by_seed == {0: 0.8, 1: 0.81}


def _code_texts(tree: ast.AST):
    """String constants (docstrings excepted) and identifiers of a module: its code, not its prose."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.arg):
            yield node.lineno, node.arg


def vocabulary_names() -> set[str]:
    """Every registered trainable's metric names (documented and declared), its plot files, and the
    parameter keys its vocabulary names (those spelt like keys: plain words such as ``teacher`` are
    also English)."""
    from trainables.runtime.trainable import get_trainable, trainable_names

    names: set[str] = set()
    for name in trainable_names():
        defn = get_trainable(name)
        vocab = defn.vocabulary
        names |= set(defn.metrics_doc) | set(vocab.plots)
        names |= {m for m in (vocab.headline, vocab.reference_metric, *vocab.table_metrics, *vocab.curves,
                              *vocab.loss_curves) if m}
        keys = {k for ks in vocab.identity.values() for k in ks} | {vocab.per_worker_batch or ""}
        names |= {k for k in keys if "." in k or "_" in k}
    return names


def test_the_declared_budget_says_when_a_trial_stopped_early_and_bounds_asha():
    from orchestrator.errors import SpecError
    from orchestrator.reports.rows import trial_status
    from orchestrator.space.spec import parse_spec
    from trainables.runtime.trainable import get_trainable

    budget = get_trainable("toy").vocabulary.budget
    assert budget == "rounds"
    assert trial_status({"rounds": 6}, {"epoch": 3}, False, budget) == "stopped_early"
    assert trial_status({"rounds": 6}, {"epoch": 6}, False, budget) == "completed"
    spec = parse_spec(TOY_SPACE.replace("scheduler: {type: fifo}", "scheduler: {type: asha, grace_period: 2}"),
                      "toy.yaml")
    assert spec.scheduler.max_t == 6  # params.rounds, the toy's budget
    with pytest.raises(SpecError, match="scheduler.max_t: is required for asha when params.rounds is not fixed"):
        parse_spec(TOY_SPACE.replace("scheduler: {type: fifo}", "scheduler: {type: asha}")
                   .replace("params: {rounds: 6, lr: 0.5}", "params: {lr: 0.5}")
                   .replace("  seed: {grid: [0, 1]}", "  seed: {grid: [0, 1]}\n  rounds: {choice: [3, 6]}"), "toy.yaml")


def test_the_orchestrator_names_no_trainables_metric_or_parameter():
    names = vocabulary_names()
    assert {"test_acc", "w2s_acc", "pgr", "knn_acc", "toy_top1", "toy_scores.png", "teacher.model",
            "batch_size"} <= names
    found = []
    for path in sorted(pathlib.Path(REPO, "orchestrator").rglob("*.py")):
        for line, text in _code_texts(ast.parse(path.read_text())):
            found += [f"{path.relative_to(REPO)}:{line}: {n}" for n in names
                      if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_a_plugin_trainable_gets_a_full_report_in_its_own_words(run_cli, tmp_path):
    space = tmp_path / "toy.yaml"
    space.write_text(TOY_SPACE)
    proc = run_cli(str(space), "--name", "toy", env={"W2S_PLUGINS": "tests.plugins.toy"}, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "ray_results" / "toy"

    with open(folder / "results.csv") as f:
        results = list(csv.DictReader(f))
    assert len(results) == 4 and {"toy_score", "toy_top1", "toy_loss", "param.solver"} <= set(results[0])

    # The printed table is the terminal's view of results_table.txt: best first, constants above it.
    header = next(line for line in out.splitlines() if line.startswith("trial ")).split()
    full = (folder / "results_table.txt").read_text().splitlines()[0].split()
    assert full[3:6] == ["toy_score", "toy_top1", "toy_loss"] and set(header) <= set(full)
    assert [h for h in header if h.startswith("toy_")] == [h for h in full if h.startswith("toy_") and h in header]

    # summary: one line per recipe (the declared identity), toy_top1 averaged over the two seeds
    summary = (folder / "summary.txt").read_text()
    assert summary.splitlines()[0].split()[:3] == ["recipe", "top-1", "(toy_top1)"]
    with open(folder / "summary.csv") as f:
        entries = {r["recipe"]: r for r in csv.DictReader(f)}
    assert set(entries) == {"gd", "heavy_ball"}
    for recipe, entry in entries.items():
        tops = [float(r["toy_top1"]) for r in results if r["param.solver"] == recipe]
        assert entry["seeds"] == "2" and float(entry["toy_top1_mean"]) == pytest.approx(statistics.fmean(tops))
    assert "top-1 (toy_top1) mean ± std" in out

    for plot in ("metric_vs_params.png", "learning_curves.png", "toy_scores.png"):
        assert (folder / "plots" / plot).read_bytes().startswith(b"\x89PNG"), plot

    best = next(line for line in out.splitlines() if line.startswith("best trial "))
    assert re.search(r": toy_score = \d\.\d{4}, toy_top1 = \d\.\d{4}$", best), best
    assert "reference runs: best config and its unsmoothed control, 2 seeds each" in out
    verdict = next(line for line in out.splitlines() if line.startswith("reference: "))
    assert "its unsmoothed control on toy_top1: " in verdict and "n=2 seeds" in verdict, verdict
    assert "too few seeds to call" in verdict, verdict  # two seeds never make a claim

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("toy")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.role` = 'parent'")[0]
    metrics = parent.data.metrics
    assert {"best_toy_score", "best_toy_top1", "reference_best_mean", "reference_control_mean"} <= set(metrics)
    assert not any(k.startswith(("best_test_acc", "w2s_")) for k in metrics)
    assert math.isfinite(metrics["reference_best_mean"]) and not np.isnan(metrics["best_toy_top1"])
