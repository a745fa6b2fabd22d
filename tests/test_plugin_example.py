"""The worked plugin example of docs/search_spaces.md (docs/examples/my_lab.py) keeps working:
its loss equals its formula, its space parses with the plugin loaded, one trial trains in-process,
and (slow) the documented command runs the sweep end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

EXAMPLES = os.path.join(REPO, "docs", "examples")
SPACE = os.path.join(EXAMPLES, "my_lab.yaml")


@pytest.fixture(scope="module")
def my_lab():
    sys.path.insert(0, EXAMPLES)
    try:
        import my_lab  # registers logit_mse, two_layer and iris_images, as W2S_PLUGINS=my_lab does

        yield my_lab
    finally:
        sys.path.remove(EXAMPLES)


def test_the_plugin_loss_is_its_formula(my_lab):
    from trainables.losses import create_loss
    from trainables.losses.base import LossInputs

    s, t, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0])
    loss = create_loss("logit_mse", {"label_weight": 0.5, "mse_weight": 2.0}, num_classes=3)
    out = loss(LossInputs(student_logits=s, teacher_logits=t, targets=y))
    ce = -torch.log_softmax(s, 1)[0, 0]
    mse = ((1.0 ** 2) + (1.0 ** 2) + (1.0 ** 2)) / 3  # (2-1)², (0-1)², (-1-0)²
    assert torch.isclose(out["loss"], 0.5 * ce + 2.0 * mse)


def test_the_space_parses_and_a_trial_trains(my_lab, tmp_path):
    from orchestrator.space.candidates import candidates
    from orchestrator.space.parse import load_spec
    from trainables.distill.trainable import run_distill
    from trainables.distill.params import DistillParams
    from trainables.runtime.session import LocalSession
    from trainables.runtime.trainable import TrialContext
    from orchestrator.store.cache import ArtifactCache

    spec = load_spec(SPACE)
    assert spec.expected_trials() == 2 and spec.params["loss"] == "logit_mse"
    config = dict(next(candidates(spec, combine=True)).config)
    result = run_distill(DistillParams.model_validate(config), LocalSession(torch.device("cpu")),
                         TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache"))))
    assert result["val_acc"] > 0.6 and result["teacher_test_acc"] > 0.6  # iris: 3 classes, easy


@pytest.mark.slow
def test_the_documented_command_runs_the_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": EXAMPLES, "W2S_PLUGINS": "my_lab"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), SPACE, "--name", "lab",
                           "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished 2 trials" in proc.stdout and "best trial " in proc.stdout
