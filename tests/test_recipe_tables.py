"""Issue 14: every seed space encodes the authors' recipe, per table column.

Each ``search_spaces/recipes/<space>.yaml`` lists the space's recipe keys with the authors' value,
where it comes from (a file of their repository), this space's value and, where the two differ, why.
These tests load each space through the project's own parser, resolve every trial config it can
produce (the fixed params, each combination of its searched values, each point to evaluate, the
trainable's defaults filled in) and check every row's ``ours`` against the trials it applies to
(all of them, or those its ``column`` selects; for a ``searched: true`` row, ``ours`` lists the
values those trials take between them); and that docs/seed_experiments.md holds the tables
as ``docs/render_recipes.py`` renders them now."""
from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from docs.render_recipes import DOC, load_recipe, recipe_files, render_all, with_tables
from orchestrator.space.candidates import candidates, with_values
from orchestrator.space.spec import get_dotted, load_spec
from tests.conftest import REPO
from tests.seed_data import local_data_overrides
from trainables.core.config import MISSING

SPACES = os.path.join(REPO, "search_spaces")
# The full seed spaces: each needs a recipe table.
SEED_SPACES = {
    "superalignment_cifar100", "superalignment_cifar100_v1", "superalignment_imagenet_kd",
    "superalignment_imagenet_transfer", "weight_selection_vit_cifar100", "weight_selection_convnext_cifar100",
    "weight_selection_vit_imagenet", "weight_selection_convnext_imagenet", "dapt_mit_indoor",
    "random_teacher_cifar10", "w2s_imagenet_probe",
    # issue 15: dinopl's other shipped configs and the locality / data-size studies
    "random_teacher_cifar10_v1", "random_teacher_cifar10_v3", "random_teacher_cifar10_dino",
    "random_teacher_cifar10_supervised", "random_teacher_mnist", "random_teacher_mnist_supervised",
    "random_teacher_tinyimagenet", "random_teacher_tinyimagenet_supervised",
    "random_teacher_cifar10_locality", "random_teacher_cifar10_datasize",
    # issue 16: the superalignment paper's few-shot experiment
    "superalignment_fewshot_miniimagenet",
    # issue 16: the noisy-label experiment
    "superalignment_noisy_cifar",
    # issue 17: DAPT's synthetic-data distillation
    "dapt_synthetic_mit_indoor",
}
# Keys every distill space's table must state, whether or not the space changes them from the default.
DISTILL_CORE = {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs", "warmup_lr",
                "min_lr", "wd_exclude_1d", "accum_steps", "augment", "auto_augment", "color_jitter",
                "random_erasing", "mixup_alpha", "cutmix_alpha", "loss", "teacher_mode"}
ROW_KEYS = {"key", "authors", "source", "ours", "note", "column", "searched"}

RECIPES = {load_recipe(p)["space"]: load_recipe(p) for p in recipe_files()}


def trial_configs(space: str, tmp_dir: str) -> list[dict]:
    """Every distinct trial config of the space, resolved by its trainable's parameter model (and
    ``loss_params`` by its loss's)."""
    from trainables.runtime.trainable import get_trainable

    path = os.path.join(SPACES, f"{space}.yaml")
    spec = load_spec(path, local_data_overrides(path, tmp_dir))
    model = get_trainable(spec.trainable).params_model
    configs = [c.config for c in candidates(spec, combine=True)]
    if spec.points_to_evaluate:
        configs = [with_values(c, p) for c in configs for p in spec.points_to_evaluate]
    out, seen = [], set()
    for config in configs:
        resolved = model.model_validate(config).model_dump()  # python mode keeps NaN (json mode nulls it)
        if isinstance(resolved.get("loss_params"), dict) and isinstance(resolved.get("loss"), str):
            try:  # the loss's defaults filled in (distill); other trainables keep their own model
                from trainables.losses import validate_loss_params

                resolved["loss_params"] = validate_loss_params(resolved["loss"], resolved["loss_params"]).model_dump()
            except (KeyError, ValueError):
                pass
        key = json.dumps(resolved, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(resolved)
    return out


def same(a, b) -> bool:
    """Equal as recipe values: numbers (or numeric strings, YAML 1.1 reads 5e-4 as one) by value,
    tuples as lists."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    fa, fb = _number(a), _number(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0) or (math.isnan(fa) and math.isnan(fb))
    return a == b


def _number(v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def selected(trials: list[dict], selector: dict) -> list[dict]:
    return [t for t in trials if all(same(get_dotted(t, k, MISSING), v) for k, v in selector.items())]


def test_every_seed_space_has_a_recipe_table():
    assert set(RECIPES) == SEED_SPACES
    for space in SEED_SPACES:
        assert os.path.isfile(os.path.join(SPACES, f"{space}.yaml")), space


@pytest.mark.parametrize("space", sorted(SEED_SPACES))
def test_recipe_rows_are_well_formed(space):
    recipe = RECIPES[space]
    assert recipe["source_repo"].count("/") == 1
    columns = recipe.get("columns") or {}
    seen = set()
    for row in recipe["rows"]:
        assert set(row) <= ROW_KEYS and {"key", "authors", "source", "ours"} <= set(row), row
        assert row["source"], f"{space}: {row['key']} names no source"
        assert row.get("column") is None or row["column"] in columns, row
        ident = (row["key"], row.get("column"))
        assert ident not in seen, f"{space}: {ident} listed twice"
        seen.add(ident)
        if row.get("searched"):
            assert isinstance(row["ours"], list) and len(row["ours"]) > 1, row
        if not same(row["ours"], row["authors"]):
            assert (row.get("note") or "").strip(), f"{space}: {row['key']} differs from the authors without a note"
    keys = {row["key"] for row in recipe["rows"]}
    with open(os.path.join(SPACES, f"{space}.yaml")) as f:
        trainable = yaml.safe_load(f)["trainable"]
    if trainable == "distill":
        assert DISTILL_CORE <= keys, f"{space}: no row for {sorted(DISTILL_CORE - keys)}"


@pytest.mark.parametrize("space", sorted(SEED_SPACES))
def test_space_matches_its_recipe_table(space, tmp_path):
    recipe = RECIPES[space]
    trials = trial_configs(space, str(tmp_path))
    columns = recipe.get("columns") or {}
    for name, selector in columns.items():
        assert selected(trials, selector), f"{space}: column {name} selects no trial"
    problems = []
    for row in recipe["rows"]:
        chosen = selected(trials, columns[row["column"]]) if row.get("column") else trials
        if row.get("searched"):  # ours lists the values the space searches: the trials take exactly those
            got = [get_dotted(t, row["key"], MISSING) for t in chosen]
            if not (all(any(same(g, o) for o in row["ours"]) for g in got)
                    and all(any(same(g, o) for g in got) for o in row["ours"])):
                problems.append(f"{row['key']}: table says searched {row['ours']!r}, the trials take "
                                f"{sorted({json.dumps(g, default=str) for g in got})}")
            continue
        for trial in chosen:
            got = get_dotted(trial, row["key"], MISSING)
            if got is MISSING or not same(got, row["ours"]):
                problems.append(f"{row['key']}" + (f" [{row['column']}]" if row.get("column") else "")
                                + f": table says {row['ours']!r}, the space gives {got!r}")
                break
    assert not problems, f"{space}:\n  " + "\n  ".join(problems)


def test_the_doc_holds_the_current_tables():
    with open(DOC) as f:
        doc = f.read()
    assert with_tables(doc, render_all()) == doc, "docs/seed_experiments.md is stale: run docs/render_recipes.py"
    # a difference always has its note (test_recipe_rows_are_well_formed): a bare ≠ is a rendering
    # that calls equal values different (NaN against NaN did)
    marked = [line for line in doc.splitlines() if " ≠ |" in line]
    assert marked and not [line for line in marked if line.rstrip().endswith("≠ |  |")]


@pytest.mark.parametrize("space", sorted(SEED_SPACES))
def test_the_dry_run_recipe_section_lists_every_row_and_marks_the_differences(space):
    from orchestrator.space.recipe_table import recipe_lines

    lines = recipe_lines(os.path.join(SPACES, f"{space}.yaml"))
    rows = RECIPES[space]["rows"]
    assert lines[0].startswith("# recipe (") and len(lines) == len(rows) + 1
    for row, line in zip(rows, lines[1:]):
        assert line.startswith(f"  {row['key']}")
        assert ("  != authors " in line) == (not same(row["ours"], row["authors"])), line


def test_a_dry_run_prints_the_recipe_and_a_space_without_a_table_prints_none(tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    # run_sweep.py's main in this process, from the repository root as before: a fresh interpreter
    # spent most of its seconds importing torch, Ray and MLflow.
    monkeypatch.chdir(REPO)

    def dry(space_file: str) -> str:
        rc = cli.main([space_file, "--dry-run", "--storage-path", str(tmp_path / "runs"),
                       "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        return out

    out = dry(os.path.join(SPACES, "superalignment_cifar100_v1.yaml"))
    recipe = out.split("# recipe (", 1)[1]
    assert "\n  auto_augment: original-mstd0.5\n" in recipe
    assert "loss_params.rate [AdaptConf]: 0.0  != authors 0.3: passed on the command line" in recipe
    assert "\n  mixup_alpha: 0.1\n" in recipe
    assert "# recipe (" not in dry(os.path.join(SPACES, "quickstart.yaml"))
