"""A model used for its predictions must predict with a trained classifier: library weights with
the default ``head: new`` put an untrained classifier on the body (the bug that made seed 000's
weak labels noise). Parse-time errors, and ``head: new`` written out as the opt-in."""
from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from orchestrator.space.spec import load_spec
from tests.conftest import REPO
from trainables.distill.params import DistillParams
from trainables.models import predicts_with_untrained_head
from trainables.w2s_probe.params import W2SProbeParams

ALEXNET = {"model": "alexnet", "model_kwargs": {"pretrained": True}}


def test_the_rule():
    assert predicts_with_untrained_head(True, {}) is not None
    assert predicts_with_untrained_head(True, {"head": "pretrained"}) is None
    assert predicts_with_untrained_head(True, {"head": "new"}) is None  # written out: an opt-in
    assert predicts_with_untrained_head(False, {}) is None  # trained here, or a checkpoint's head


def test_a_weak_model_with_a_new_head_is_refused():
    with pytest.raises(ValidationError, match="weak.model_kwargs.head: the weak model labels the pool; .*noise"):
        W2SProbeParams(weak=ALEXNET, pretrain_split={"weak": 0.0, "strong": 0.35})
    ok = {"model": "alexnet", "model_kwargs": {"pretrained": True, "head": "pretrained"}}
    assert W2SProbeParams(weak=ok, pretrain_split={"weak": 0.0, "strong": 0.35}).weak.model_kwargs["head"] == "pretrained"
    # Trained here, the new head is trained on the weak slice before it labels anything.
    trained = {**ALEXNET, "train": {"epochs": 1}}
    assert W2SProbeParams(weak=trained).weak.train is not None


def test_seed_000_space_labels_with_alexnets_own_classifier():
    spec = load_spec(os.path.join(REPO, "search_spaces", "w2s_imagenet_probe.yaml"))
    assert spec.params["weak"]["model_kwargs"] == {"pretrained": True, "head": "pretrained"}


def test_a_pt_teacher_read_for_its_logits_needs_its_head_chosen():
    teacher = {"model": "tv:resnet18", "init": "pt", "pretrained": True}
    with pytest.raises(ValidationError, match="teacher.model_kwargs.head: loss 'kd' reads the pt teacher's logits"):
        DistillParams(teacher=teacher, loss="kd")
    # Weight selection takes only the pt teacher's weights (loss ce): its head does not matter.
    assert DistillParams(teacher=teacher, loss="ce").teacher.init == "pt"
    # Choosing the head, either way, is accepted.
    for head in ("pretrained", "new"):
        assert DistillParams(teacher={**teacher, "model_kwargs": {"head": head}}, loss="kd").loss == "kd"
