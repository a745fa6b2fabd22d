"""The dino family's tracking keys (issue 15 item 11): statistics against hand-computed values,
no host sync in the training step, and the checkpoint entries where the docs say."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainables.data import load_dataset
from trainables.dino.loop import DinoRun, train_dino
from trainables.dino.params import DinoParams
from trainables.dino.tracking import FEAT_STATS, GradVariance, feature_stats, param_stats, value_stats
from trainables.runtime.engine import predict
from trainables.runtime.session import LocalSession, load_state

TINY = {"encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 1, "global_scale": [1.0, 1.0], "hflip": False},
        "loss_params": {"teacher_temp": 0.1, "student_temp": 0.1, "pairing": "same"},
        "epochs": 2, "warmup_epochs": 0, "batch_size": 128, "lr": 5e-3, "probe_every": 1,
        "probe_epochs": 2, "freeze_last_layer_epochs": 0, "student_init": "random", "student_init_seed": 1}
ALL = {"track_feathist": True, "track_gradvar": True, "save_paramstats": ["all"], "save_features": "probe",
       "keep_loss_max": True}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def params(**overrides) -> DinoParams:
    return DinoParams.model_validate({**TINY, **overrides})


# ------------------------------------------------------------------------------ statistics by hand

def test_value_stats_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 10.0]])
    v = np.array([0, 1, 2, 3, 4, 10], dtype=float)
    expected = [v.mean(), v.std(ddof=1), *np.quantile(v, [0.05, 0.5, 0.95])]
    assert value_stats(x).tolist() == pytest.approx(expected, rel=1e-6)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
            self.head.weight.copy_(torch.tensor([[2.0, -1.0]]))


def test_feature_stats_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    enc = np.array([1, 3, 3, 2], dtype=float)      # x @ W_enc.T: rows [1, 3], [3, 2]
    head = np.array([2 * 1 - 3, 2 * 3 - 2], dtype=float)
    model = Tiny().train()
    out = feature_stats({"student": model}, x)
    assert model.training  # the mode is put back
    assert len(out) == 2 * len(FEAT_STATS)
    for part, v in (("encoder", enc), ("head", head)):
        expected = dict(zip(FEAT_STATS, [v.mean(), v.std(ddof=1), *np.quantile(v, [0.05, 0.5, 0.95])]))
        for stat, value in expected.items():
            assert float(out[f"feat_student_{part}_{stat}"]) == pytest.approx(value, rel=1e-6)


def test_grad_variance_is_the_summed_per_coordinate_variance_over_steps():
    model = Tiny()
    tracker = GradVariance({"encoder": list(model.encoder.parameters()), "head": list(model.head.parameters())})
    torch.manual_seed(0)
    grads = [(torch.randn(2, 2), torch.randn(1, 2)) for _ in range(5)]
    for g_enc, g_head in grads:
        model.encoder.weight.grad, model.head.weight.grad = g_enc.clone(), g_head.clone()
        tracker.add()
    var = tracker.variances()
    enc = torch.stack([g for g, _ in grads]).var(0, unbiased=True).sum()
    head = torch.stack([g for _, g in grads]).var(0, unbiased=True).sum()
    assert float(var["encoder"]) == pytest.approx(float(enc), rel=1e-5)
    assert float(var["head"]) == pytest.approx(float(head), rel=1e-5)
    # dinopl's form: Σ ||g_i − ḡ||² / (n − 1)
    flat = torch.stack([torch.cat([a.flatten(), b.flatten()]) for a, b in grads])
    assert float(var["encoder"] + var["head"]) == pytest.approx(
        float(((flat - flat.mean(0)) ** 2).sum() / (len(grads) - 1)), rel=1e-5)
    tracker.reset()
    assert float(tracker.variances()["encoder"]) == 0.0


def test_param_stats_by_hand():
    model = Tiny()
    init = {"encoder.weight": torch.zeros(2, 2), "head.weight": torch.tensor([[2.0, 1.0]])}
    table = param_stats(model, init)
    assert table[0].tolist() == pytest.approx([3 ** 0.5, (3 / 4) ** 0.5, 3 ** 0.5])
    assert table[1].tolist() == pytest.approx([5 ** 0.5, (5 / 2) ** 0.5, 2.0])


# ------------------------------------------------------------------------------ validation

def test_tracking_keys_validate():
    assert params(save_paramstats="all").save_paramstats == ["student", "teacher"]
    assert params(save_paramstats=["teacher", "teacher"]).save_paramstats == ["teacher"]
    with pytest.raises(ValidationError, match="track_every needs"):
        params(track_every=2)
    with pytest.raises(ValidationError, match="track_samples needs"):
        params(track_samples=16)
    with pytest.raises(ValidationError):
        params(save_paramstats=["head"])
    with pytest.raises(ValidationError):
        params(save_features="always")
    assert params(track_gradvar=True, track_every=3).track_every == 3


# ------------------------------------------------------------------------------ in the loop

def _no_sync_from_trainables(original):
    """``original``, refused when called from the project's code (torch's CPU optimisers read
    their step counter with ``item`` on the host, which on CUDA stays on the device)."""
    def patched(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if f"{os.sep}trainables{os.sep}" in caller:
            raise AssertionError(f"host sync in the training step ({original.__name__} from {caller})")
        return original(self, *args, **kwargs)
    return patched


def test_no_host_sync_in_the_step(digits, one_torch_thread, monkeypatch):
    run = DinoRun(params(**ALL), digits, LocalSession(torch.device("cpu")))
    with monkeypatch.context() as m:
        # __int__ / __bool__ stay: the dino loss counts its crop pairs on a host-side mask
        for name in ("item", "tolist", "__float__", "cpu", "numpy"):
            m.setattr(torch.Tensor, name, _no_sync_from_trainables(getattr(torch.Tensor, name)))
        stats = run.train_epoch(0)
    metrics = run.epoch_metrics(0, {k: float(v) for k, v in stats.items()})
    assert {"grad_var", "loss_max", "feat_student_head_q50", "param_dist_init_teacher"} <= metrics.keys()


def test_tracked_values_match_the_steps(digits, one_torch_thread):
    """grad_var from the gradients each update saw; loss_max and its parameters from each update."""
    run = DinoRun(params(**ALL, epochs=1), digits, LocalSession(torch.device("cpu")))
    grads, losses, snapshots = [], [], []
    after_backward, after_step = run.tracker.after_backward, run.tracker.after_step

    def record_backward():
        grads.append(torch.cat([p.grad.flatten() for p in run.student.parameters()]))
        after_backward()

    def record_step(loss, step):
        losses.append(float(loss.detach()))
        snapshots.append({n: t.detach().clone() for n, t in run.student.named_parameters()})
        after_step(loss, step)

    run.tracker.after_backward, run.tracker.after_step = record_backward, record_step
    stats = run.train_epoch(0)
    metrics = run.epoch_metrics(0, {k: float(v) for k, v in stats.items()})
    g = torch.stack(grads)
    assert len(g) > 2
    assert metrics["grad_var"] == pytest.approx(float(g.var(0, unbiased=True).sum()), rel=1e-4)
    best = int(np.argmax(losses))
    assert metrics["loss_max"] == pytest.approx(max(losses)) and metrics["loss_max_step"] == best
    saved = run.tracker.records["loss_max"]["student"]
    assert all(torch.equal(saved[n], snapshots[best][n]) for n in saved)
    x = digits.train_x[:256]
    feats = run.student.encoder.eval()(x)
    assert metrics["feat_student_encoder_mean"] == pytest.approx(float(feats.mean().detach()), rel=1e-5)


def test_checkpoint_entries_on_disk(digits, one_torch_thread, tmp_path):
    p = params(**ALL, epochs=3, track_every=2, probe_every=2)
    session = LocalSession(torch.device("cpu"), checkpoint_dir=str(tmp_path))
    train_dino(p, digits, session, checkpoint_every=1)
    state = load_state(str(tmp_path))  # <checkpoint dir>/state.pt, as Tune's checkpoint folders
    feats = state["features"]
    assert feats["epoch"] == 3
    for split in ("train", "val", "test"):
        assert feats[split].shape == (len(getattr(digits, f"{split}_y")), 32)
        assert torch.equal(feats[f"{split}_y"], getattr(digits, f"{split}_y").cpu())
    encoder_state = {k[len("encoder."):]: v for k, v in state["student"].items() if k.startswith("encoder.")}
    run = DinoRun(p, digits, LocalSession(torch.device("cpu")))
    run.student.encoder.load_state_dict(encoder_state)
    assert torch.allclose(feats["test"], predict(run.student.encoder, digits.test_x, features=True))
    stats = state["paramstats"]
    assert stats["epochs"] == [2, 3]  # every track_every epochs and the last
    assert set(stats) == {"epochs", "student", "teacher"}
    assert all(len(v["dist_init"]) == 2 for v in stats["student"].values())
    assert np.isfinite(state["loss_max"]["loss"]) and state["loss_max"]["step"] >= 0
    history = session.history
    assert "grad_var" not in history[0] and "grad_var" in history[1] and "grad_var" in history[2]
    assert all("loss_max" in h for h in history)


def test_resume_keeps_loss_max(digits, one_torch_thread, tmp_path):
    p = params(keep_loss_max=True, epochs=2)
    whole = LocalSession(torch.device("cpu"))
    train_dino(p, digits, whole, checkpoint_every=1)

    class StopAfter(LocalSession):
        def report(self, metrics, checkpoint=None):
            super().report(metrics, checkpoint)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dino(p, digits, StopAfter(torch.device("cpu"), str(tmp_path)), checkpoint_every=1)
    resumed = LocalSession(torch.device("cpu"), str(tmp_path))
    train_dino(p, digits, resumed, checkpoint_every=1)
    assert resumed.last["loss_max"] == pytest.approx(whole.last["loss_max"])
    assert resumed.last["loss_max_step"] == whole.last["loss_max_step"]


def test_float64_tracks(digits, one_torch_thread):
    session = LocalSession(torch.device("cpu"))
    train_dino(params(**ALL, epochs=1, float64=True), digits, session)
    assert np.isfinite(session.last["loss_max"]) and np.isfinite(session.last["grad_var"])
    assert session.last_state["loss_max"]["student"]["encoder.body.1.weight"].dtype == torch.float64


def test_tracking_off_adds_nothing(digits, one_torch_thread):
    session = LocalSession(torch.device("cpu"))
    train_dino(params(epochs=1), digits, session)
    assert not any(k.startswith(("feat_", "grad_var", "param_", "loss_max")) for k in session.last)
    assert not {"features", "paramstats", "loss_max"} & session.last_state.keys()
