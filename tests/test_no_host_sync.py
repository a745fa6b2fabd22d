"""Issue 18: no device-to-host sync in a training step. Every registered loss (forward, backward
and its own state updates: CRD's memory banks and normaliser, DINO's centres) and one full step
of the distill classifier loop run under :class:`SyncCheck` on the CPU, which records the ops that
would sync on a GPU; on a GPU the same steps run under ``torch.cuda.set_sync_debug_mode("error")``."""
import pytest
import torch

from trainables.data import DatasetSplits
from trainables.data.augment import Augment
from trainables.losses import DistillLoss, LossInputs, LossParams, create_loss, loss_names
from trainables.losses.auxconf import auxconf_coef
from trainables.losses.dino import crop_pairs, pair_mask
from trainables.models import create_model
from trainables.runtime.engine import predict
from trainables.runtime.session import LocalSession
from trainables.runtime.sync_check import SyncCheck
from trainables.training.batch_augment import batch_augment_of
from trainables.training.classifier_loop import CachedTeacher, ClassifierRun, OnlineTeacher, OptimConfig
from trainables.training.recipe import AugmentParams
from trainables.training.views import FixedViews, PlainViews, RandomViews, teacher_view_logits, view_params

CPU = torch.device("cpu")
N, C, DS, DT, SAMPLES = 8, 10, 6, 5, 16
DINO_SETTINGS = [(pairing, objective) for pairing in ("opposite", "same", "all") for objective in ("ce", "mse")]


def loss_context(student_dim=DS, teacher_dim=DT, head=None, train_labels=None):
    """Every context key any classifier loss reads (each loss takes the ones it needs)."""
    labels = torch.arange(SAMPLES) % C if train_labels is None else train_labels
    return dict(num_classes=C, student_dim=student_dim, teacher_dim=teacher_dim, num_samples=SAMPLES,
                train_labels=labels, teacher_head=head or torch.nn.Linear(teacher_dim, C))


def batch(step, device=CPU):
    g = torch.Generator().manual_seed(step)
    t = dict(student_logits=torch.randn(N, C, generator=g), teacher_logits=torch.randn(N, C, generator=g),
             student_features=torch.randn(N, DS, generator=g), teacher_features=torch.randn(N, DT, generator=g))
    t = {k: v.to(device).requires_grad_(k.startswith("student")) for k, v in t.items()}
    return LossInputs(targets=torch.randint(0, C, (N,), generator=g).to(device),
                      indices=torch.randperm(SAMPLES, generator=g)[:N].to(device), epoch=1, num_epochs=4,
                      progress=0.25, **t)


def loss_steps(fn, batches) -> None:
    """Forward + backward of a classifier loss on each batch; two batches, so that state set on the
    first (CRD's normaliser) and state updated on every one (its memory banks) are both exercised."""
    for inputs in batches:
        fn(inputs)["loss"].backward()


def loss_step_syncs(fn) -> SyncCheck:
    batches = [batch(0), batch(1)]  # made before the check: building inputs is not the step
    with SyncCheck() as check:
        loss_steps(fn, batches)
    return check


def dino_inputs(device=CPU):
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, N, 12, generator=g).to(device).requires_grad_(), torch.randn(2, N, 12, generator=g).to(device)


def dino_step(fn, inputs):
    xs, xt = inputs
    fn(xs, xt, epoch=0)["loss"].backward()


class BoolMaskCE(DistillLoss):
    """A deliberately syncing loss: the cross-entropy of the correctly ranked samples, picked by a
    boolean mask (a data-dependent shape)."""

    needs_teacher = False

    def forward(self, inputs):
        right = inputs.student_logits.argmax(-1) == inputs.targets
        picked = inputs.student_logits[right]
        loss = torch.nn.functional.cross_entropy(picked, inputs.targets[right]) if len(picked) else picked.sum()
        return {"loss": loss}


def test_the_check_catches_a_deliberately_syncing_loss():
    check = loss_step_syncs(BoolMaskCE(LossParams()))
    assert "aten.index.Tensor" in {s.op for s in check.syncs}
    assert any("test_no_host_sync.py" in s.where and "forward" in s.where for s in check.syncs)


@pytest.mark.parametrize("name", loss_names("classifier"))
def test_a_classifier_loss_step_makes_no_host_sync(name):
    torch.manual_seed(0)
    fn = create_loss(name, {}, **loss_context())
    check = loss_step_syncs(fn)
    assert check.syncs == [], check.report()


@pytest.mark.parametrize("pairing,objective", DINO_SETTINGS)
def test_a_dino_loss_step_makes_no_host_sync(pairing, objective):
    fn = create_loss("dino", {"pairing": pairing, "objective": objective}, out_dim=12)
    inputs = dino_inputs()
    with SyncCheck() as check:
        dino_step(fn, inputs)
    assert check.syncs == [], check.report()
    assert fn.teacher_center.abs().sum() > 0  # the centre update ran under the check


@pytest.mark.parametrize("pairing", ["opposite", "same", "all"])
@pytest.mark.parametrize("nt,ns", [(1, 1), (2, 3), (2, 6), (3, 2)])
def test_dino_host_pairs_are_the_pairs_of_its_mask(pairing, nt, ns):
    # the pairs were read from the mask with nonzero().tolist(); now listed in Python: the same pairs
    assert crop_pairs(nt, ns, pairing) == [tuple(p) for p in pair_mask(nt, ns, pairing).nonzero().tolist()]


def test_auxconf_logs_its_coefficient_as_a_device_scalar():
    fn = create_loss("auxconf", {"aux_coef": 0.3, "warmup_frac": 0.5})
    out = fn(batch(0))
    assert out["aux_coef"].dim() == 0 and out["aux_coef"].dtype == torch.float32
    assert out["aux_coef"].item() == pytest.approx(auxconf_coef(0.25, 0.3, 0.5))


# one step of the classifier loop ----------------------------------------------------------------

def toy_data() -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3 * SAMPLES, 3, 8, 8, generator=g), torch.randint(0, C, (3 * SAMPLES,), generator=g)
    s = SAMPLES
    return DatasetSplits("toy", x[:s], y[:s], x[s:2 * s], y[s:2 * s], x[2 * s:], y[2 * s:], C, (0.0,) * 3, (1.0,) * 3)


def tiny_model():
    torch.manual_seed(0)
    return create_model("cnn_small", num_classes=C, input_shape=(3, 8, 8))


@pytest.fixture(scope="module")
def setup():
    data, teacher = toy_data(), tiny_model().eval()
    augment = Augment("flip_crop", pad=2)
    params = view_params(augment, SAMPLES, (3, 8, 8), 2, view_seed=0)
    return dict(data=data, teacher=teacher, augment=augment, params=params,
                logits=predict(teacher, data.train_x), features=predict(teacher, data.train_x, features=True),
                view_logits=teacher_view_logits(teacher, data.train_x, augment, params))


def teacher_and_views(mode, s):
    """(teacher signal, views, batch augmentation) of a distill teacher mode."""
    if mode == "plain_cached":
        return CachedTeacher(s["logits"], s["features"]), PlainViews(), None
    if mode == "fixed_views":
        return (CachedTeacher(s["view_logits"]), FixedViews(s["augment"], s["params"], 2, "sampled", 0, CPU), None)
    mixing = batch_augment_of(AugmentParams(mixup_alpha=0.8, cutmix_alpha=1.0), s["data"].mean, s["data"].std, C)
    return OnlineTeacher(s["teacher"]), RandomViews(s["augment"], 0, CPU), mixing


STEP_CASES = [(loss, mode) for loss in loss_names("classifier") for mode in ("plain_cached", "fixed_views", "mix_online")
              if not (mode == "fixed_views" and loss in ("align_uniform", "crd", "srrl"))]  # no per-view features


@pytest.mark.parametrize("loss,mode", STEP_CASES)
def test_a_classifier_loop_step_makes_no_host_sync(loss, mode, setup, one_torch_thread):
    teacher, views, mixing = teacher_and_views(mode, setup)
    fn = create_loss(loss, {}, **loss_context(tiny_model().num_features, setup["teacher"].num_features,
                                              setup["teacher"].head, setup["data"].train_y))
    run = ClassifierRun(tiny_model(), setup["data"], fn, OptimConfig(epochs=2, batch_size=N, lr=0.1),
                        LocalSession(CPU), 0, teacher, views, {}, mixing)
    before = [p.detach().clone() for p in run.model.parameters()]
    run.views.start_epoch(0)
    with SyncCheck() as check:
        outs = run.step(0, [torch.arange(N)])  # prepares the batch here, on this thread, under the check
    assert check.syncs == [], check.report()
    assert torch.isfinite(outs[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))  # the step stepped


@pytest.mark.parametrize("loss", ["kd", "crd"])
def test_a_whole_epoch_with_accumulation_makes_no_host_sync(loss, setup, one_torch_thread):
    # the per-step statistics (EpochMeans) and the accumulation group's weighting are in the epoch path too
    fn = create_loss(loss, {}, **loss_context(tiny_model().num_features, setup["teacher"].num_features,
                                              setup["teacher"].head, setup["data"].train_y))
    run = ClassifierRun(tiny_model(), setup["data"], fn, OptimConfig(epochs=2, batch_size=4, lr=0.1, accum_steps=2),
                        LocalSession(CPU), 0, CachedTeacher(setup["logits"], setup["features"]), PlainViews(), {})
    with SyncCheck() as check:
        stats = run.train_epoch(0)
    assert check.syncs == [], check.report()
    assert torch.isfinite(stats["train_loss"])


# the same on a GPU, under CUDA's own sync detection ---------------------------------------------

def under_cuda_sync_error(step) -> None:
    """``step()`` with CUDA raising on any synchronising call, the device drained around it."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def cuda_loss_step(name, cuda):
    """A fresh loss on the GPU and ``step()``: its forward + backward on inputs already there."""
    torch.manual_seed(0)
    if name == "dino":
        fn, inputs = create_loss("dino", {}, out_dim=12).to(cuda), dino_inputs(cuda)
        return lambda: dino_step(fn, inputs)
    fn, batches = create_loss(name, {}, **loss_context()).to(cuda), [batch(0, cuda), batch(1, cuda)]
    return lambda: loss_steps(fn, batches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name", loss_names())
def test_every_loss_step_runs_under_cuda_sync_error_mode(name):
    cuda = torch.device("cuda")
    cuda_loss_step(name, cuda)()  # warm-up on another instance: library handles and kernels load once
    # a fresh instance under the check, so its first-batch state (CRD's normaliser) is checked too;
    # its inputs were copied to the GPU before: the copies are not the step
    under_cuda_sync_error(cuda_loss_step(name, cuda))


def cuda_classifier_run(loss: str, setup, cuda: torch.device, **optim) -> ClassifierRun:
    """A ClassifierRun of ``loss`` on the GPU over the setup's data and cached teacher outputs."""
    data = setup["data"]
    data = DatasetSplits("toy", data.train_x.to(cuda), data.train_y.to(cuda), data.val_x, data.val_y, data.test_x,
                         data.test_y, C, data.mean, data.std)
    teacher = CachedTeacher(setup["logits"].to(cuda), setup["features"].to(cuda))
    fn = create_loss(loss, {}, **loss_context(tiny_model().num_features, setup["teacher"].num_features,
                                              setup["teacher"].head, setup["data"].train_y))
    return ClassifierRun(tiny_model(), data, fn, OptimConfig(epochs=2, batch_size=N, lr=0.1, **optim),
                         LocalSession(cuda), 0, teacher, PlainViews(), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("loss", loss_names("classifier"))
def test_a_classifier_loop_step_runs_under_cuda_sync_error_mode(loss, setup):
    cuda = torch.device("cuda")
    run = cuda_classifier_run(loss, setup, cuda, cuda_graphs=False)
    idx = torch.arange(N, device=cuda)
    run.step(0, [idx])  # warm-up: cuDNN, cuBLAS and the optimiser's first step
    under_cuda_sync_error(lambda: run.step(0, [idx]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("loss", loss_names("classifier"))
def test_a_replayed_classifier_loop_step_runs_under_cuda_sync_error_mode(loss, setup):
    """``cuda_graphs: auto`` (the default on CUDA): the warm-up steps and the capture first, then a
    replayed step under the check: the teacher lookup, the static inputs' copies, the replay, the
    schedule's in-place lr and the statistics make no host sync."""
    from trainables.training.member_graphs import WARMUP

    cuda = torch.device("cuda")
    run = cuda_classifier_run(loss, setup, cuda)
    assert run.step_graphs is not None
    idx = torch.arange(N, device=cuda)
    for _ in range(WARMUP + 1):  # eager warm-up steps, then the capture and its first replay
        run.step(0, [idx])
    assert run.step_graphs.graphs[0].captures == 1
    under_cuda_sync_error(lambda: run.step(0, [idx]))
    assert run.step_graphs.graphs[0].captures == 1  # replayed, not captured again
