"""On-device batch augmentation (valid crops and flips, labels aligned, seeded) and the three
teacher modes (online, cached, sampled_views) giving identical losses on identical views."""
import math

import pytest
import torch
import torch.nn.functional as F

from orchestrator.store.cache import ArtifactCache
from trainables.data.augment import Augment, epoch_generator
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.losses import LossInputs, create_loss
from trainables.models import create_model
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.training.classifier_loop import CachedTeacher, OnlineTeacher
from trainables.training.views import FixedViews, RandomViews, teacher_view_logits, view_params

CPU = torch.device("cpu")
SHAPE = (3, 8, 10)  # non-square, so height and width cannot be swapped unnoticed


def images(n=16, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_pad_crop_is_a_window_of_the_padded_image_and_flip_an_exact_mirror():
    x = images()
    for mode, torch_mode in (("reflect", "reflect"), ("zeros", "constant")):
        aug = Augment("flip_crop", pad=3, pad_mode=mode)
        p = aug.sample(len(x), SHAPE, torch.Generator().manual_seed(1))
        out = aug.apply(x, p)
        assert out.shape == x.shape
        padded = F.pad(x, (3,) * 4, mode=torch_mode)
        for i in range(len(x)):
            dy, dx = int(p["dy"][i]), int(p["dx"][i])
            assert 0 <= dy <= 6 and 0 <= dx <= 6
            window = padded[i, :, dy:dy + SHAPE[1], dx:dx + SHAPE[2]]
            expected = window.flip(2) if p["flip"][i] else window
            assert torch.equal(out[i], expected)
        assert 0 < int(p["flip"].sum()) < len(x)  # both branches exercised


def test_zero_padding_only_adds_zeros_and_values_stay_in_range():
    x = images() + 5.0  # all positive, so padded zeros are recognisable
    aug = Augment("flip_crop", pad=2, pad_mode="zeros")
    out = aug.apply(x, aug.sample(len(x), SHAPE, torch.Generator().manual_seed(2)))
    nonzero = out[out != 0]
    assert nonzero.min() >= x.min() and nonzero.max() <= x.max()
    assert (out == 0).any()


def test_resized_crop_boxes_are_valid_and_the_full_box_is_the_identity():
    x = images()
    aug = Augment("rrc_flip", scale=(0.25, 1.0))
    p = aug.sample(len(x), SHAPE, torch.Generator().manual_seed(3))
    x0, y0, bw, bh = p["box"].unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + bw <= 1 + 1e-6).all() and (y0 + bh <= 1 + 1e-6).all()
    # Boxes that did not need clamping to the image have the asked-for area and pixel aspect ratio.
    free = (bw < 1) & (bh < 1)
    assert free.sum() > len(x) // 2
    area, aspect = (bw * bh)[free], (bw * SHAPE[2] / (bh * SHAPE[1]))[free]
    assert ((area >= 0.25 - 1e-5) & (area <= 1 + 1e-5)).all()
    assert ((aspect >= 0.75 - 1e-4) & (aspect <= 4 / 3 + 1e-4)).all()
    out = aug.apply(x, p)
    assert out.shape == x.shape
    # Bilinear resampling is a convex combination of each image's own pixels.
    flat_in, flat_out = x.flatten(1), out.flatten(1)
    assert (flat_out.min(1).values >= flat_in.min(1).values - 1e-5).all()
    assert (flat_out.max(1).values <= flat_in.max(1).values + 1e-5).all()
    full = {"box": torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(len(x), 1), "flip": p["flip"]}
    expected = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)
    torch.testing.assert_close(aug.apply(x, full), expected, atol=1e-5, rtol=0)


def test_labels_stay_aligned_with_their_images():
    # Each image is constant, its value its label: any view of it must keep that value.
    labels = torch.arange(12)
    x = labels.float().view(-1, 1, 1, 1).expand(-1, *SHAPE).contiguous()
    for aug in (Augment("flip_crop", pad=4), Augment("rrc_flip")):
        views = RandomViews(aug, seed=0, device=CPU)
        views.start_epoch(0)
        idx = torch.tensor([5, 0, 11, 3])
        out, view_ids = views.batch(x, idx)
        assert view_ids is None
        torch.testing.assert_close(out, labels[idx].float().view(-1, 1, 1, 1).expand_as(out))


def test_augmentation_is_determined_by_seed_and_epoch():
    x = images()
    aug = Augment("flip_crop")

    def run(seed, epoch):
        views = RandomViews(aug, seed=seed, device=CPU)
        views.start_epoch(epoch)
        return views.batch(x, torch.arange(len(x)))[0]

    assert torch.equal(run(0, 0), run(0, 0))
    assert not torch.equal(run(0, 0), run(0, 1))
    assert not torch.equal(run(0, 0), run(1, 0))
    a = view_params(aug, 16, SHAPE, 3, view_seed=5)
    b = view_params(aug, 16, SHAPE, 3, view_seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a) and a["dy"].shape == (3, 16)
    assert epoch_generator(0, 0, CPU).initial_seed() != epoch_generator(0, 1, CPU).initial_seed()


def test_fixed_views_cycle_and_sample_as_documented():
    aug = Augment("flip_crop")
    params = view_params(aug, 16, SHAPE, 4, view_seed=0)
    cycle = FixedViews(aug, params, 4, "cycle", seed=0, device=CPU)
    cycle.start_epoch(6)
    assert torch.equal(cycle.batch(images(), torch.arange(16))[1], torch.full((16,), 2))
    sampled = FixedViews(aug, params, 4, "sampled", seed=0, device=CPU)
    seen = set()
    for epoch in range(3):
        sampled.start_epoch(epoch)
        v = sampled.batch(images(), torch.arange(16))[1]
        assert ((v >= 0) & (v < 4)).all()
        seen |= set(v.tolist())
    assert len(seen) > 1


@pytest.mark.parametrize("kind", ["flip_crop", "rrc_flip"])
def test_cached_sampled_and_online_teacher_give_identical_losses_on_identical_views(kind):
    torch.manual_seed(0)
    x, y = images(24), torch.randint(0, 5, (24,))
    teacher = create_model("cnn_small", num_classes=5, input_shape=SHAPE).eval()
    student = create_model("cnn_small", num_classes=5, input_shape=SHAPE)
    aug = Augment(kind)
    params = view_params(aug, len(x), SHAPE, 3, view_seed=1)
    cached = CachedTeacher(teacher_view_logits(teacher, x, aug, params, batch_size=7))
    online = OnlineTeacher(teacher)
    loss_fn = create_loss("kd", {"temperature": 4.0}, num_classes=5)
    idx = torch.tensor([3, 17, 0, 9, 22])
    for order in ("cycle", "sampled"):
        views = FixedViews(aug, params, 3, order, seed=2, device=CPU)
        views.start_epoch(1)
        xb, view_ids = views.batch(x, idx)
        s_logits = student(xb)
        losses = {}
        for name, signal in (("cached", cached), ("online", online)):
            t_logits, _ = signal.outputs(idx, xb, views=view_ids)
            losses[name] = loss_fn(LossInputs(student_logits=s_logits, targets=y[idx], teacher_logits=t_logits,
                                              indices=idx))["loss"]
        assert torch.isfinite(losses["cached"])
        torch.testing.assert_close(losses["cached"], losses["online"], atol=1e-6, rtol=1e-5)


FAST_TEACHER = {"model": "mlp", "epochs": 2, "lr": 0.05}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends on a shared CPU
    yield
    torch.set_num_threads(threads)


def test_augmented_distill_runs_in_every_mode_and_shares_the_view_cache(tmp_path, one_thread):
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")), checkpoint_every=0)
    finals = {}
    for mode, seed in (("cached", 0), ("sampled_views", 0), ("sampled_views", 1), ("online", 0)):
        session = LocalSession(CPU)
        params = DistillParams(teacher=FAST_TEACHER, student="mlp_tiny", epochs=2, augment="flip_crop",
                               crop_pad=1, teacher_views=2, teacher_mode=mode, seed=seed)
        finals[(mode, seed)] = run_distill(params, session, ctx)
        assert [h["epoch"] for h in session.history] == [1, 2]
    for final in finals.values():
        assert math.isfinite(final["train_loss"]) and 0.0 <= final["val_acc"] <= 1.0
    entries = [e for e in (tmp_path / "cache").rglob("view_logits.pt")]
    assert len(entries) == 1  # one teacher-views entry, built once, for three cached-view trials
    logits = torch.load(entries[0])
    assert logits.shape[:2] == (2, 1078)


def test_bad_mode_combinations_are_rejected_up_front():
    with pytest.raises(ValueError, match="sampled_views"):
        DistillParams(teacher_mode="sampled_views")
    with pytest.raises(ValueError, match="teacher features"):
        DistillParams(augment="flip_crop", loss="crd")
    with pytest.raises(ValueError, match="rrc_scale"):
        DistillParams(augment="rrc_flip", rrc_scale=(0.5, 0.2))


def test_black_padding_is_torchvisions_random_crop_border_in_the_normalised_data():
    import torchvision.transforms.functional as TF

    from trainables.training.batch_augment import geometric_of
    from trainables.training.recipe import AugmentParams

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    unit = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    norm = TF.normalize(unit, mean, std)
    aug = geometric_of(AugmentParams(augment="flip_crop", crop_pad=2, pad_mode="black", hflip=0.0), mean, std)
    # The data's statistics stay out of the key (the data is in it already).
    assert aug.recipe() == {"kind": "flip_crop", "pad": 2, "pad_mode": "black", "hflip": 0.0}
    params = aug.sample(5, (3, 6, 6), torch.Generator().manual_seed(1))
    got = aug.apply(norm, params)
    for i in range(5):  # torchvision: pad the image with 0, cut the window, then normalise
        padded = TF.pad(unit[i], [2, 2, 2, 2], fill=0)
        dy, dx = int(params["dy"][i]), int(params["dx"][i])
        want = TF.normalize(padded[:, dy:dy + 6, dx:dx + 6], mean, std)
        assert torch.allclose(got[i], want, atol=1e-6)
    assert (params["dy"] != 2).any()  # some window shows the border
    with pytest.raises(ValueError, match="pad_mode black needs the border value"):
        geometric_of(AugmentParams(augment="flip_crop", pad_mode="black")).apply(norm, params)
