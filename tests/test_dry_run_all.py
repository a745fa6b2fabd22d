"""Every search space in search_spaces/ dry-runs on a fresh clone (what `make dry-run-all` does),
whatever data or weights this machine lacks: those are listed under `# missing inputs`, not fatal."""
from __future__ import annotations

import glob
import os

import pytest

from orchestrator import cli
from tests.conftest import REPO

SPACES = sorted(glob.glob(os.path.join(REPO, "search_spaces", "*.yaml")))


@pytest.mark.parametrize("path", SPACES, ids=[os.path.basename(p) for p in SPACES])
def test_space_dry_runs(path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # spaces name assets relative to the repository root
    rc = cli.main([path, "--dry-run", "--storage-path", str(tmp_path / "runs"),
                   "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert "# trial plan" in out and "Traceback" not in err


def test_a_space_without_its_data_lists_what_is_missing(tmp_path, capsys):
    path = os.path.join(REPO, "search_spaces", "superalignment_fewshot_miniimagenet.yaml")
    rc = cli.main([path, "--dry-run", "--set", f"params.dataset_kwargs.data_root={tmp_path}/none",
                   "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
    out, _ = capsys.readouterr()
    assert rc == 0
    missing = out.split("# missing inputs (1): ")[1].split("\n\n")[0]
    assert "params.dataset: dataset 'mini_imagenet' is not available" in missing
    assert f"{tmp_path}/none" in missing and "miniImageNet_category_split_train_phase_train.pickle" in missing
