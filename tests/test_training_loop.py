"""The shared training loop, without Ray: it learns, caches the teacher, and resumes."""
import torch

from orchestrator.store.cache import ArtifactCache
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext

FAST_TEACHER = {"model": "mlp", "epochs": 8, "lr": 0.1}


def ctx_for(tmp_path, every=0):
    return TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")), checkpoint_every=every)


def test_distill_learns_and_reports_every_epoch(tmp_path):
    ctx = ctx_for(tmp_path)
    session = LocalSession(torch.device("cpu"))
    params = DistillParams(teacher=FAST_TEACHER, student="mlp_tiny", epochs=6, lr=0.05)
    final = run_distill(params, session, ctx)
    assert [h["epoch"] for h in session.history] == [1, 2, 3, 4, 5, 6]
    assert 0.85 < final["test_acc"] <= 1.0 and 0.85 < final["teacher_test_acc"] <= 1.0
    assert session.history[-1]["train_loss"] < session.history[0]["train_loss"]


def test_teacher_is_trained_once_per_recipe(tmp_path):
    ctx = ctx_for(tmp_path)
    for seed in (0, 1):
        run_distill(DistillParams(teacher=FAST_TEACHER, epochs=1, seed=seed), LocalSession(torch.device("cpu")), ctx)
    assert ctx.artifacts.stats.misses == 1 and ctx.artifacts.stats.hits == 1
    run_distill(DistillParams(teacher={**FAST_TEACHER, "epochs": 9}, epochs=1), LocalSession(torch.device("cpu")), ctx)
    assert ctx.artifacts.stats.misses == 2  # a different recipe is a different teacher


def test_online_and_cached_teacher_give_the_same_run(tmp_path):
    ctx = ctx_for(tmp_path)
    runs = {}
    for mode in ("cached", "online"):
        s = LocalSession(torch.device("cpu"))
        run_distill(DistillParams(teacher=FAST_TEACHER, epochs=2, teacher_mode=mode), s, ctx)
        runs[mode] = s.history
    for a, b in zip(runs["cached"], runs["online"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and a["val_acc"] == b["val_acc"]


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path):
    ctx = ctx_for(tmp_path, every=2)
    ckpt = str(tmp_path / "ckpt")
    full = LocalSession(torch.device("cpu"))
    run_distill(DistillParams(teacher=FAST_TEACHER, epochs=4), full, ctx_for(tmp_path / "other", every=2))

    first = LocalSession(torch.device("cpu"), checkpoint_dir=ckpt)
    params = DistillParams(teacher=FAST_TEACHER, epochs=4)
    # Simulate a crash after epoch 2: run a 4-epoch trial but stop reporting after the checkpoint.
    class Crash(Exception):
        pass

    def report(metrics, checkpoint=None, _orig=first.report):
        _orig(metrics, checkpoint)
        if metrics["epoch"] == 2:
            raise Crash

    first.report = report
    try:
        run_distill(params, first, ctx)
    except Crash:
        pass
    resumed = LocalSession(torch.device("cpu"), checkpoint_dir=ckpt)
    run_distill(params, resumed, ctx)
    assert [h["epoch"] for h in resumed.history] == [3, 4]
    assert abs(resumed.history[-1]["train_loss"] - full.history[-1]["train_loss"]) < 1e-5
    assert resumed.history[-1]["val_acc"] == full.history[-1]["val_acc"]
