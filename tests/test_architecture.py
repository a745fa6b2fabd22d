"""The import contract (``.importlinter``, checked by import-linter's ``lint-imports``): it holds
on the code as it is, and it catches an import that points up a layer."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
    # Run from ``root`` so that the packages grimp analyses are the ones under it, not the repository's.
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([LINT, "--no-cache", "--no-logo", os.path.join(root, ".importlinter")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def copy_project(tmp_path) -> str:
    root = str(tmp_path / "project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("orchestrator", "trainables"):
        shutil.copytree(os.path.join(REPO, package), os.path.join(root, package), ignore=ignore)
    shutil.copy(os.path.join(REPO, ".importlinter"), root)
    return root


def test_the_import_contract_holds():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")
    assert "kept" in proc.stdout.lower()


@pytest.mark.parametrize("module, upward_import, contract", [
    # The lowest layer of the trainables reaching up into the orchestrator.
    ("trainables/core/config.py", "import orchestrator.cli", "trainables never import the orchestrator"),
    # A search-space module reaching up into the run layer.
    ("orchestrator/space/vectorized.py", "from orchestrator.run import sweep", "Orchestrator wings"),
    # A loss reaching up into a family.
    ("trainables/losses/kd.py", "import trainables.distill.trainable", "Trainables: families"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward_import, contract):
    root = copy_project(tmp_path)
    path = os.path.join(root, module)
    with open(path) as f:
        source = f.read()
    with open(path, "w") as f:
        f.write(source + f"\n{upward_import}  # deliberately upward\n")
    proc = lint(root)
    assert proc.returncode != 0, proc.stdout
    broken = proc.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, proc.stdout
    importer = module[:-3].replace("/", ".")
    assert f"{importer} -> " in broken, broken  # the report names the offending import
