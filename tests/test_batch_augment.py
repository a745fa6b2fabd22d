"""The per-step training-recipe augmentation (issue 14): kornia's policies, colour jitter and
erasing on normalised batches, timm's mixup / cutmix with soft targets, the teacher-mode rules,
and the teacher recipe's own augmentation."""
import json
import math

import numpy as np
import pytest
import torch

from orchestrator.store.cache import MANIFEST, ArtifactCache
from trainables.data.policy import AUTO_AUGMENTS, Photometric
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.distill.teacher import TeacherRecipe
from trainables.losses import LossInputs, create_loss, loss_names
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.training.batch_augment import BatchAugment, batch_augment_of
from trainables.training.classifier_loop import ClassifierRun, OptimConfig
from trainables.training.recipe import AugmentParams
from trainables.training.views import PlainViews

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
POLICIES = [p for p in AUTO_AUGMENTS if p != "none"]


def unit_images(n=32, c=3, h=16, w=16, seed=0) -> torch.Tensor:
    """Images in [0, 1] with structure (a gradient plus noise), so geometric ops change them."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, c, h, w)
    return (0.6 * ramp + 0.4 * torch.rand(n, c, h, w, generator=g)).clamp(0, 1)


def normalised(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def bounds(mean=MEAN, std=STD):
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


@pytest.mark.parametrize("policy", POLICIES + ["color_jitter"])
def test_policies_keep_shape_and_the_unit_range_and_differ_per_image(policy):
    torch.manual_seed(0)
    aug = (Photometric(MEAN, STD, color_jitter=0.4) if policy == "color_jitter"
           else Photometric(MEAN, STD, auto_augment=policy, groups=8))
    # the same image 32 times: any difference between the outputs is per-sample randomness
    x = normalised(unit_images(1).expand(32, -1, -1, -1).contiguous())
    out = aug.apply(x.clone())
    lo, hi = bounds()
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(out >= lo - 1e-4) and torch.all(out <= hi + 1e-4)  # a valid [0, 1] image, re-normalised
    distinct = {tuple(o.flatten()[::37].round(decimals=3).tolist()) for o in out}
    assert len(distinct) >= 4, f"{policy}: {len(distinct)} distinct outputs of 32 copies"
    assert not torch.equal(out, x)


def test_grey_images_go_through_the_colour_policies_and_stay_one_channel():
    torch.manual_seed(0)
    aug = Photometric((0.5,), (0.25,), auto_augment="randaugment")
    out = aug.apply(normalised(unit_images(8, c=1), (0.5,), (0.25,)))
    assert out.shape == (8, 1, 16, 16)
    lo, hi = bounds((0.5,), (0.25,))
    assert torch.all(out >= lo - 1e-4) and torch.all(out <= hi + 1e-4)


def test_random_erasing_fills_one_box_per_erased_image_with_unit_noise():
    torch.manual_seed(0)
    x = torch.full((64, 3, 32, 32), 7.0)  # a value the N(0, 1) fill cannot produce
    out = Photometric(MEAN, STD, random_erasing=0.5).apply(x.clone())
    erased = (out != 7.0).flatten(1).any(1)
    assert 15 <= int(erased.sum()) <= 49  # Binomial(64, 0.5)
    for img in out[erased]:
        rows, cols = torch.where((img != 7.0).any(0))
        box = img[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert torch.all(box != 7.0)  # the erased region is a full rectangle
        area = box.shape[1] * box.shape[2] / (32 * 32)
        assert 0.02 - 0.01 <= area <= 1 / 3 + 0.05
    noise = out[out != 7.0]
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.1


def mix(alpha_mix=0.0, alpha_cut=0.0, n=16, classes=10, seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)
    p = AugmentParams(mixup_alpha=alpha_mix, cutmix_alpha=alpha_cut)
    aug = batch_augment_of(p, MEAN, STD, classes)
    x = torch.randn(n, 3, 8, 8)
    y = torch.arange(n) % classes
    out_x, targets = aug(x.clone(), y)
    return x, y, out_x, targets


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_sum_to_one_and_weigh_each_image_and_its_partner_as_the_pixels_do(kind):
    x, y, out_x, t = mix(alpha_mix=1.0 if kind == "mixup" else 0.0, alpha_cut=1.0 if kind == "cutmix" else 0.0)
    assert t.shape == (16, 10) and torch.allclose(t.sum(1), torch.ones(16))
    partner = y.flip(0)  # timm's batch mode pairs image i with image n-1-i
    lam = t[torch.arange(16), y]
    assert torch.allclose(t[torch.arange(16), partner], 1 - lam)
    lam0 = float(lam[0])
    if kind == "mixup":
        assert torch.allclose(out_x, lam0 * x + (1 - lam0) * x.flip(0), atol=1e-6)
    else:
        # each pixel is the image's own or its partner's, and the partner's share is 1 - lambda
        own = torch.isclose(out_x, x).all(1)
        other = torch.isclose(out_x, x.flip(0)).all(1)
        assert torch.all(own | other)
        assert math.isclose(float(own[0].float().mean()), lam0, abs_tol=1e-6)


def distill_losses() -> list[str]:
    """The losses a distill trial can name (dino's multi-crop loss belongs to the dino family)."""
    names = []
    for name in sorted(loss_names()):
        try:
            DistillParams(loss=name, teacher_mode="online", mixup_alpha=0.8)
        except ValueError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("loss", distill_losses())
def test_every_loss_takes_the_soft_targets_of_a_mixed_batch(loss):
    _, _, _, t = mix(alpha_mix=0.8, alpha_cut=1.0, n=8, classes=10)
    torch.manual_seed(0)
    ctx = dict(num_classes=10, student_dim=6, teacher_dim=5, num_samples=8, train_labels=torch.arange(8) % 10,
               teacher_head=torch.nn.Linear(5, 10))
    fn = create_loss(loss, {}, **ctx)
    inputs = LossInputs(student_logits=torch.randn(8, 10, requires_grad=True), targets=t,
                        teacher_logits=torch.randn(8, 10), student_features=torch.randn(8, 6, requires_grad=True),
                        teacher_features=torch.randn(8, 5), indices=torch.arange(8), epoch=1, num_epochs=4,
                        progress=0.25)
    out = fn(inputs)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert fn.soft_targets


def test_soft_target_cross_entropy_equals_the_mixture_of_the_two_label_losses():
    _, y, _, t = mix(alpha_mix=1.0, n=8, classes=10)
    logits = torch.randn(8, 10)
    lam = t[torch.arange(8), y]
    ce = create_loss("ce", {}, num_classes=10)
    expected = (lam * torch.nn.functional.cross_entropy(logits, y, reduction="none")
                + (1 - lam) * torch.nn.functional.cross_entropy(logits, y.flip(0), reduction="none")).mean()
    got = ce(LossInputs(student_logits=logits, targets=t))["loss"]
    assert torch.allclose(got, expected, atol=1e-5)


def test_nothing_on_is_the_identity():
    aug = batch_augment_of(AugmentParams(), MEAN, STD, 10)
    assert not aug.active
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    out_x, out_y = aug(x, y)
    assert out_x is x and out_y is y


@pytest.mark.parametrize("config, match", [
    ({"auto_augment": "randaugment"}, "teacher_mode: auto_augment draws new random ops every step.*'cached'"),
    ({"mixup_alpha": 0.8, "teacher_mode": "sampled_views", "augment": "flip_crop"}, "mixup_alpha draws new"),
    ({"random_erasing": 0.25}, "random_erasing draws new"),
    ({"color_jitter": 0.4}, "color_jitter draws new"),
    ({"mixup_alpha": 0.8, "teacher_mode": "online", "batch_size": 63}, "batch_size: mixup / cutmix .* even batch_size"),
    ({"auto_augment": "autoaugment"}, "auto_augment"),
    ({"randaugment_m": 10}, "randaugment_m"),
    ({"random_erasing": 1.5}, "random_erasing"),
    ({"mixup_prob": -0.1}, "mixup_prob"),
    ({"rrc_ratio": (2.0, 1.0)}, "rrc_ratio"),
    ({"layer_decay": 0.65, "student": "resnet8"}, "layer_decay: student 'resnet8' has no layer groups"),
    ({"teacher": {"init": "lp", "pretrained": True, "model": "timm:resnet18", "augment": "rrc_flip"}},
     "augment: teacher.init lp trains only the head"),
    ({"teacher": {"augment": "flip_crop", "mixup_alpha": 1.0, "batch_size": 7}}, "batch_size: mixup / cutmix"),
    ({"teacher": {"model": "cnn", "layer_decay": 0.7}}, "layer_decay: needs teacher.init fr or ft and a timm model"),
])
def test_bad_recipes_are_refused_at_parse_time_naming_the_key(config, match):
    with pytest.raises(ValueError, match=match):
        DistillParams(**config)


def test_the_no_teacher_loss_and_online_teacher_accept_per_step_ops():
    DistillParams(loss="ce", auto_augment="randaugment", mixup_alpha=0.8, cutmix_alpha=1.0)
    DistillParams(teacher_mode="online", auto_augment="trivialaugment", random_erasing=0.25, mixup_alpha=0.1)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_distill_trial_with_the_full_recipe_trains_teacher_and_student_augmented(tmp_path, one_thread):
    """digits (8x8, grey): teacher with RRC + TrivialAugment + mixup, student with RandAugment,
    erasing, mixup and cutmix, the teacher online on the mixed batch."""
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")), checkpoint_every=0)
    teacher = {"model": "cnn", "epochs": 2, "lr": 0.05, "batch_size": 64, "augment": "rrc_flip",
               "rrc_scale": (0.35, 1.0), "auto_augment": "trivialaugment", "mixup_alpha": 0.2}
    params = DistillParams(dataset="digits", teacher=teacher, student="cnn", epochs=2, batch_size=64,
                           teacher_mode="online", augment="flip_crop", crop_pad=1, auto_augment="randaugment",
                           randaugment_m=5, random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0, loss="kd")
    session = LocalSession(CPU)
    final = run_distill(params, session, ctx)
    assert [h["epoch"] for h in session.history] == [1, 2]
    assert math.isfinite(final["train_loss"]) and 0.0 <= final["val_acc"] <= 1.0
    # the teacher learnt under its augmented recipe, and the recipe is part of its cache key
    assert final["teacher_val_acc"] > 0.3
    metas = list((tmp_path / "cache").rglob("teacher.json"))
    assert len(metas) == 1
    manifest = json.loads((metas[0].parent / MANIFEST).read_text())
    assert manifest["recipe"]["auto_augment"] == "trivialaugment" and manifest["recipe"]["mixup_alpha"] == 0.2


def test_the_teacher_recipe_key_holds_its_augmentation():
    plain = TeacherRecipe(model="cnn").model_dump()
    augmented = TeacherRecipe(model="cnn", augment="rrc_flip", auto_augment="autoaugment_cifar10").model_dump()
    assert plain != augmented and augmented["auto_augment"] == "autoaugment_cifar10"


def test_mixing_drops_an_odd_last_batch_so_every_batch_pairs_up():
    from tests.test_recipe_optim import cnn, image_data

    d = image_data()
    n = len(d.train_y)
    assert n % 6 != 0
    sizes = {}
    for name, aug in (("plain", BatchAugment()), ("mixing", batch_augment_of(AugmentParams(mixup_alpha=1.0), d.mean,
                                                                             d.std, d.num_classes))):
        run = ClassifierRun(cnn(), d, create_loss("ce"), OptimConfig(epochs=1, batch_size=6, lr=0.1),
                            LocalSession(CPU), 0, None, PlainViews(), {}, aug)
        seen = []
        run.forward = lambda epoch, idx, *rest, _seen=seen, _f=run.forward: (_seen.append(len(idx)), _f(epoch, idx, *rest))[1]
        run.train_epoch(0)
        sizes[name] = seen
    assert sum(sizes["plain"]) == n and sizes["plain"][-1] == n % 6
    assert sizes["mixing"] == [6] * (n // 6)


def test_mixing_with_a_labels_only_loss_is_refused(monkeypatch):
    from trainables.losses import loss_class

    monkeypatch.setattr(loss_class("kd"), "soft_targets", False)
    with pytest.raises(ValueError, match="cutmix_alpha: loss 'kd' takes class labels only"):
        DistillParams(loss="kd", teacher_mode="online", cutmix_alpha=1.0)


def test_layer_decay_gives_each_timm_layer_group_lr_times_decay_to_its_depth():
    from timm.optim import param_groups_layer_decay

    from trainables.models import create_model
    from trainables.runtime.engine import head_lr_groups

    model = create_model("timm:vit_tiny_patch16_224", num_classes=10, input_shape=(3, 32, 32),
                         img_size=32, patch_size=8, depth=3)
    groups = head_lr_groups(model, lr=1e-3, head_lr_mult=1.0, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    vit = model.model
    num_layers = 3 + 2  # timm: embeddings (0), blocks 1..3, head (4)
    # the head at the full lr, block i at lr * 0.5^(L-1-(i+1)), the patch embedding lowest
    assert by_param[id(vit.head.weight)]["lr"] == pytest.approx(1e-3)
    for i, block in enumerate(vit.blocks):
        assert by_param[id(block.attn.qkv.weight)]["lr"] == pytest.approx(1e-3 * 0.5 ** (num_layers - 1 - (i + 1)))
    assert by_param[id(vit.patch_embed.proj.weight)]["lr"] == pytest.approx(1e-3 * 0.5 ** (num_layers - 1))
    # biases and norms still carry no weight decay; matrices do
    assert by_param[id(vit.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(vit.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert groups[0]["lr"] == pytest.approx(1e-3)  # the reported lr is the full one
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # the same groups timm makes, as torch groups with their own lr
    assert len(groups) == len(param_groups_layer_decay(vit, 0.05, layer_decay=0.5))


def test_hflip_sets_the_flip_probability_and_enters_the_view_key_only_off_its_default():
    from trainables.data.augment import Augment

    gen = torch.Generator().manual_seed(0)
    for p, lo, hi in ((0.0, 0, 0), (1.0, 4000, 4000), (0.5, 1900, 2100), (0.2, 700, 900)):
        flips = Augment("rrc_flip", hflip=p).sample(4000, (3, 8, 8), gen)["flip"]
        assert lo <= int(flips.sum()) <= hi, (p, int(flips.sum()))
    assert "hflip" not in Augment("flip_crop").recipe() and Augment("flip_crop", hflip=0.0).recipe()["hflip"] == 0.0
    assert DistillParams(augment="rrc_flip", hflip=0.0, teacher={"augment": "flip_crop", "hflip": 0.0}).hflip == 0.0
    with pytest.raises(ValueError, match="hflip"):
        DistillParams(hflip=1.5)
