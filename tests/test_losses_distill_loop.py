"""Every classifier loss trains through `run_distill` in both teacher modes with identical losses;
teacher features are cached once; a loss's own parameters and state stay in step under DDP."""
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from orchestrator.store.cache import ArtifactCache
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.losses import loss_names
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext

FAST_TEACHER = {"model": "mlp", "epochs": 8, "lr": 0.1}
# Small enough for CPU tests; every other parameter keeps the loss's default.
TEST_PARAMS = {"crd": {"nce_k": 64}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and a second one only contends on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return TrialContext(artifacts=ArtifactCache(str(tmp_path_factory.mktemp("cache"))), checkpoint_every=0)


@pytest.mark.parametrize("loss", loss_names("classifier"))
def test_every_classifier_loss_trains_identically_in_both_teacher_modes(loss, ctx):
    runs = {}
    for mode in ("cached", "online"):
        session = LocalSession(torch.device("cpu"))
        params = DistillParams(teacher=FAST_TEACHER, student="mlp_tiny", epochs=2, lr=0.05, teacher_mode=mode,
                               loss=loss, loss_params=TEST_PARAMS.get(loss, {}))
        run_distill(params, session, ctx)
        runs[mode] = session.history
    for cached, online in zip(runs["cached"], runs["online"]):
        assert math.isfinite(cached["train_loss"])
        assert set(cached) == set(online)
        for key in (k for k in cached if k.startswith("train_")):
            assert cached[key] == pytest.approx(online[key], rel=1e-4, abs=1e-5), key
        assert cached["val_acc"] == online["val_acc"]
    assert 0.1 < runs["cached"][-1]["val_acc"] <= 1.0


def test_teacher_features_are_a_cache_entry_built_once(ctx):
    for loss in ("align_uniform", "srrl"):
        run_distill(DistillParams(teacher=FAST_TEACHER, student="mlp_tiny", epochs=1, loss=loss),
                    LocalSession(torch.device("cpu")), ctx)
    builds = [b.split("/")[0] for b in ctx.artifacts.stats.builds]
    assert builds.count("teacher") == 1 and builds.count("teacher_features") == 1


# --------------------------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned ranks: ~10 s of CPU, mostly importing torch (compiled: ~40 s)
@pytest.mark.parametrize("compile_mode", [False, True], ids=["eager", "compiled"])
def test_loss_parameters_and_memory_stay_in_step_under_ddp(tmp_path, compile_mode):
    from ddp_loss_worker import run_rank

    mp.spawn(run_rank, args=(2, _free_port(), str(tmp_path), compile_mode), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and {"memory", "z", "student_projector.0.weight"} <= set(r0)
    for key in r0:
        torch.testing.assert_close(r0[key], r1[key], rtol=1e-6, atol=1e-7, equal_nan=True, msg=key)
    # Each rank trained on its own shard, so equal weights mean the gradients were averaged;
    # the banks saw every rank's batch (each rank's own indices alone would leave half untouched).
    norms = r0["memory"].norm(dim=-1)  # an updated slot of either bank is unit-norm; an untouched one is not
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


# ------------------------------------------------------------------------------ validation, context

SPACE = """
name: t
trainable: distill
params: {dataset: digits, student: mlp_tiny, epochs: 4}
search:
  loss: {choice: [kd, dino]}
"""


def test_a_search_space_cannot_give_distill_the_dino_loss():
    from orchestrator.errors import SpecError
    from orchestrator.space.spec import parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec(SPACE, "space.yaml")
    assert "search.loss.choice[1]" in str(info.value) and "takes multicrop inputs" in str(info.value)


def test_context_is_checked_and_never_a_loss_parameter():
    from trainables.losses import create_loss

    with pytest.raises(ValueError, match="needs 'student_dim'"):
        create_loss("align_uniform")
    with pytest.raises(ValueError, match="temperature are loss parameters, not trainable context"):
        create_loss("kd", temperature=2.0)
    with pytest.raises(ValueError, match="loss_params.num_samples: loss 'crd' has no parameter.s. num_samples; accepted: "):
        DistillParams(loss="crd", loss_params={"num_samples": 10})
