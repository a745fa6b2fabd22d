"""Cached stages in training (trainables/runtime/stages.py): their progress lines, and their resume
after an interrupted build from the checkpoint in the cache entry's work folder, ending as an
uninterrupted build does: a teacher through the artifact cache, and a Sel-CL stage."""
from __future__ import annotations

import json

import pytest
import torch

import trainables.runtime.stages as stages
from orchestrator.store.cache import WORK_PREFIX, ArtifactCache
from trainables.data import load_dataset
from trainables.distill.loop import teacher_recipe
from trainables.distill.params import DistillParams
from trainables.distill.teacher import build_teacher
from trainables.models import create_model
from trainables.runtime.engine import seed_everything
from trainables.runtime.session import CHECKPOINT_FILE
from trainables.runtime.stages import StageSession
from trainables.selcl.config import SelCLConfig
from trainables.selcl.stage import train_selcl

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    """Stands for Ctrl-C or a lost node in the middle of a stage."""


def interrupt_after(monkeypatch, epoch: int) -> None:
    """Every stage reports epoch ``epoch`` (its checkpoint saved) and then stops, once."""
    report = StageSession.report

    def stop_there(self, metrics, checkpoint=None):
        report(self, metrics, checkpoint)
        if self.epochs_done == epoch and self.resumed_at < epoch:
            raise Interrupted
    monkeypatch.setattr(StageSession, "report", stop_there)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_first_then_every_interval_and_the_last():
    clock, lines = Clock(), []
    session = StageSession("teacher mlp (fr, digits)", 10, CPU, interval_s=30, clock=clock, say=lines.append)
    for epoch in range(1, 11):
        clock.now = 12.0 * epoch  # 12 s per epoch
        session.report({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.05 * epoch, "lr": 0.1})
    # after epoch 1 (12 s), then at 48 s, 84 s, 120 s (the last): 30 s apart at least
    assert [line.split(" | ")[0] for line in lines] == [f"teacher mlp (fr, digits): epoch {e}/10" for e in (1, 4, 7, 10)]
    assert lines[1] == "teacher mlp (fr, digits): epoch 4/10 | train_loss 0.25 | val_acc 0.2 | 12s/epoch, about 72s left"
    assert lines[-1].endswith("| 12s/epoch")  # nothing left


def test_in_a_trial_a_stages_lines_start_with_the_trial_id(monkeypatch):
    """Two trials' stages print the same label side by side (a searched noise rate): the id tells them apart."""
    from trainables.runtime import stages

    monkeypatch.setattr(stages, "current_trial_id", lambda: "e019d_00001")
    clock, lines = Clock(), []
    session = StageSession("student cnn (Sel-CL stage, digits)", 2, CPU, clock=clock, say=lines.append)
    clock.now = 1.0
    session.report({"epoch": 1, "train_loss": 0.5, "val_acc": 0.25})
    assert lines == ["e019d_00001 student cnn (Sel-CL stage, digits): epoch 1/2 | train_loss 0.5 | val_acc 0.25 | "
                     "1s/epoch, about 1s left"]


def test_checkpoints_every_interval_and_after_the_last_epoch_with_the_history(tmp_path):
    clock, saved = Clock(), []
    session = StageSession("s", 5, CPU, str(tmp_path), checkpoint_interval_s=25, clock=clock, say=lambda line: None)
    for epoch in range(1, 6):
        clock.now = 10.0 * epoch
        session.report({"epoch": epoch, "train_loss": float(epoch)}, checkpoint={"progress": {"epoch": epoch}})
        if (tmp_path / CHECKPOINT_FILE).exists():
            saved.append(torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["progress"]["epoch"])
    assert sorted(set(saved)) == [3, 5]  # 30 s after the start, then the last epoch
    lines = []
    again = StageSession("s", 5, CPU, str(tmp_path), say=lines.append)
    state = again.restore()
    assert state["progress"] == {"epoch": 5} and stages.HISTORY_KEY not in state
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4, 5] and again.last["train_loss"] == 5.0
    assert lines == [f"s: resuming after epoch 5/5 from its checkpoint in {tmp_path}"]


def test_an_unreadable_checkpoint_starts_the_stage_over(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    lines = []
    session = StageSession("teacher cnn (fr, digits)", 5, CPU, str(tmp_path), say=lines.append)
    assert session.restore() is None and session.history == [] and session.resumed_at == 0
    assert len(lines) == 1 and lines[0].startswith("teacher cnn (fr, digits): checkpoint ")
    assert lines[0].endswith("; starting the stage over") and "unreadable or corrupt" in lines[0]


def fast_teacher(epochs: int = 6) -> dict:
    p = DistillParams(dataset="digits", teacher={"model": "cnn_small", "epochs": epochs, "lr": 0.05, "batch_size": 128,
                                                 "augment": "flip_crop", "crop_pad": 1, "hflip": 0.0})
    return teacher_recipe(p)


def teacher_build(cache: ArtifactCache, recipe: dict):
    return cache.get_or_create("teacher", recipe, lambda out: build_teacher(recipe, out, device=CPU))


@pytest.mark.parametrize("stop_at", [3, 6])
def test_an_interrupted_teacher_build_resumes_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys, stop_at):
    recipe = fast_teacher()
    whole = teacher_build(ArtifactCache(str(tmp_path / "whole")), recipe)
    monkeypatch.setattr(stages, "CHECKPOINT_INTERVAL_S", 0.0)  # a checkpoint after every epoch
    interrupt_after(monkeypatch, stop_at)
    cache = ArtifactCache(str(tmp_path / "cache"))
    with pytest.raises(Interrupted):
        teacher_build(cache, recipe)
    work = list((tmp_path / "cache" / "teacher").glob(f"{WORK_PREFIX}*"))
    assert len(work) == 1 and (work[0] / "teacher" / CHECKPOINT_FILE).exists()
    assert cache.lookup("teacher", whole.key) is None  # nothing half-published
    capsys.readouterr()

    resumed = teacher_build(cache, recipe)
    out = capsys.readouterr().out
    assert f"resuming after epoch {stop_at}/6" in out
    assert f"epoch {stop_at + 1}/6" in out if stop_at < 6 else "epoch 1/6" not in out
    assert not list((tmp_path / "cache" / "teacher").glob(f"{WORK_PREFIX}*"))  # published: the work folder goes
    assert resumed.key == whole.key and resumed.meta["val_acc"] == whole.meta["val_acc"]
    a, b = (torch.load(e.file("model.pt")) for e in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.load(whole.file("train_logits.pt")), torch.load(resumed.file("train_logits.pt")))


def selcl_stage(session: StageSession | None = None):
    data = load_dataset("digits", seed=0)
    cfg = SelCLConfig(epochs=4, batch_size=128, milestones=[3], warmup_epochs=1, uns_queue=256, queue_per_class=20,
                      k_val=10, sup_queue_begin=1, low_dim=8, augment="complex", seed=1)
    seed_everything(cfg.seed)
    model = create_model("cnn_small", num_classes=10, input_shape=data.input_shape)
    return train_selcl(model, data, cfg, session=session)


def test_an_interrupted_selcl_stage_resumes_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """Interrupted after epoch 2: the selection, the pair memory, both queues, the views' generator
    and the global generators (mixing) come back, and the last two epochs repeat the same draws."""
    whole = selcl_stage()
    interrupt_after(monkeypatch, 2)

    def session():
        return StageSession("Sel-CL", 4, CPU, str(tmp_path), checkpoint_interval_s=0, say=lambda line: None)
    with pytest.raises(Interrupted):
        selcl_stage(session())
    resumed = selcl_stage(session())
    assert json.dumps(resumed.history) == json.dumps(whole.history)
    assert torch.equal(resumed.selection.selected, whole.selection.selected)
    assert resumed.threshold == whole.threshold
    a, b = whole.backbone.state_dict(), resumed.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
