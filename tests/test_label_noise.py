"""Issue 16: label noise (the "Vision Superalignment" noisy-label experiment) and PreAct-ResNet18/34.

The noise functions against their definitions and the authors' published class maps (written out
by hand here, not read from the module), the parse-time refusals, the teacher's cache key, and a
short in-process distill trial that trains teacher and student on noisy labels while evaluating on
clean ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data.label_noise import (CIFAR100_COARSE, CLASS_MAPS, apply_label_noise, asymmetric_noise,
                                         symmetric_noise)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def balanced(n: int, classes: int) -> np.ndarray:
    return np.arange(n) % classes


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
@pytest.mark.parametrize("classes", [10, 100])
def test_symmetric_rate_and_no_flip_keeps_its_class(rate, classes):
    clean = balanced(10_000, classes)
    out = symmetric_noise(clean, classes, rate, seed=3)
    changed = out.labels != clean
    assert abs(changed.mean() - rate) <= 0.01 and out.rate == pytest.approx(changed.mean())
    assert np.array_equal(out.changed, changed)
    # Every picked label moved: the number changed is exactly int(N * rate).
    assert changed.sum() == int(10_000 * rate)
    assert out.labels.min() >= 0 and out.labels.max() < classes
    # The replacement is spread over the other classes: every class receives some flips.
    assert len(np.unique(out.labels[changed])) == classes


def test_symmetric_draw_over_all_classes_keeps_one_in_c():
    """The authors' draw (keep_own_class): 1/C of the picked labels stay, so 20 % asked is ~18 % realised on 10 classes."""
    clean = balanced(10_000, 10)
    out = symmetric_noise(clean, 10, 0.2, seed=0, keep_own_class=True)
    assert abs(out.rate - 0.2 * 9 / 10) <= 0.01


def test_symmetric_keeps_the_input_type_and_device():
    clean = torch.arange(1000) % 10
    out = symmetric_noise(clean, 10, 0.3, seed=1)
    assert isinstance(out.labels, torch.Tensor) and out.labels.dtype == clean.dtype
    assert (out.labels != clean).float().mean().item() == pytest.approx(out.rate)


def test_noise_is_reproducible_from_its_seed():
    clean = balanced(5000, 10)
    for noise in (lambda s: symmetric_noise(clean, 10, 0.2, s), lambda s: asymmetric_noise(clean, CLASS_MAPS["cifar10"][1], 0.4, s)):
        assert np.array_equal(noise(7).labels, noise(7).labels)
        assert not np.array_equal(noise(7).labels, noise(8).labels)


def test_cifar10_asymmetric_map_is_the_published_one():
    # truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog; the other classes stay.
    expected = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    clean = balanced(20_000, 10)
    out = apply_label_noise(clean, "asymmetric", 0.4, seed=0, num_classes=10, dataset="cifar10")
    moved = {(int(a), int(b)) for a, b in zip(clean[out.changed], out.labels[out.changed])}
    assert moved == set(expected.items())
    for c in range(10):
        flipped = out.changed[clean == c].mean()
        assert (abs(flipped - 0.4) < 0.03) if c in expected else flipped == 0.0
    # Half the classes are mapped, so 40 % asked changes about 20 % of all labels.
    assert abs(out.rate - 0.2) < 0.01


def test_cifar100_asymmetric_cycles_within_super_classes():
    mapping = CLASS_MAPS["cifar100"][1]
    # A few super-classes by hand (fine indices in CIFAR-100's alphabetical order):
    cycles = {
        "aquatic mammals": [4, 30, 55, 72, 95],     # beaver, dolphin, otter, seal, whale
        "flowers": [54, 62, 70, 82, 92],            # orchid, poppy, rose, sunflower, tulip
        "people": [2, 11, 35, 46, 98],              # baby, boy, girl, man, woman
        "vehicles 2": [41, 69, 81, 85, 89],         # lawn_mower, rocket, streetcar, tank, tractor
    }
    for members in cycles.values():
        for a, b in zip(members, members[1:] + members[:1]):
            assert mapping[a] == b
    # Every fine class moves, to another class of the same super-class, and the map is a permutation.
    assert sorted(mapping) == sorted(mapping.values()) == list(range(100))
    assert all(mapping[c] != c and CIFAR100_COARSE[mapping[c]] == CIFAR100_COARSE[c] for c in range(100))
    clean = balanced(10_000, 100)
    out = apply_label_noise(clean, "asymmetric", 0.4, seed=0, num_classes=100, dataset="cifar100")
    assert abs(out.rate - 0.4) < 0.02
    assert all(mapping[int(a)] == int(b) for a, b in zip(clean[out.changed], out.labels[out.changed]))


def test_asymmetric_needs_a_class_map():
    with pytest.raises(ValueError, match="dataset 'digits' has none"):
        apply_label_noise(balanced(100, 10), "asymmetric", 0.4, 0, num_classes=10, dataset="digits")
    with pytest.raises(ValueError, match="fine labels"):
        apply_label_noise(balanced(100, 20), "asymmetric", 0.4, 0, num_classes=20, dataset="cifar100",
                          dataset_kwargs={"label_key": "coarse_labels"})
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        symmetric_noise(balanced(100, 10), 10, 1.0, 0)


def test_parse_time_refusals_name_the_key():
    from pydantic import ValidationError

    from trainables.distill.params import DistillParams

    for noise, key in (({"kind": "symmetric", "rate": 1.0}, "rate"), ({"kind": "symmetric", "rate": -0.1}, "rate"),
                       ({"kind": "asymmetric", "rate": 0.4}, "label_noise.kind")):
        with pytest.raises(ValidationError, match=key):
            DistillParams(label_noise=noise)
    cifar = DistillParams(dataset="cifar10", dataset_kwargs={"download": True},
                          label_noise={"kind": "asymmetric", "rate": 0.4})
    assert cifar.label_noise.kind == "asymmetric"


def test_teacher_cache_key_differs_with_noise_and_clean_keys_are_unchanged():
    from trainables.distill.loop import teacher_recipe
    from trainables.distill.params import DistillParams

    clean = teacher_recipe(DistillParams())
    assert "label_noise" not in clean  # teachers cached before label noise existed keep their keys
    assert teacher_recipe(DistillParams(label_noise={"kind": "none", "rate": 0.3})) == clean
    sym = teacher_recipe(DistillParams(label_noise={"kind": "symmetric", "rate": 0.2}))
    other_seed = teacher_recipe(DistillParams(label_noise={"kind": "symmetric", "rate": 0.2, "seed": 1}))
    assert len({repr(sorted(r.items())) for r in (clean, sym, other_seed)}) == 3


def test_distill_trial_trains_on_noisy_labels_and_evaluates_on_clean_ones(tmp_path, monkeypatch):
    """Teacher and student see the same noisy training labels; val and test labels are the clean ones."""
    from orchestrator.store.cache import ArtifactCache
    from trainables.data import load_dataset
    from trainables.distill import loop, teacher
    from trainables.distill.params import DistillParams
    from trainables.runtime.session import LocalSession
    from trainables.runtime.trainable import TrialContext

    seen = []

    def spy(original):
        def wrapped(**kwargs):
            seen.append(kwargs["data"])
            return original(**kwargs)
        return wrapped

    monkeypatch.setattr(teacher, "train_classifier", spy(teacher.train_classifier))
    monkeypatch.setattr(loop, "train_classifier", spy(loop.train_classifier))
    params = DistillParams(teacher={"model": "cnn_small", "epochs": 1}, student="mlp_tiny", epochs=1,
                           label_noise={"kind": "symmetric", "rate": 0.3, "seed": 5})
    session = LocalSession(torch.device("cpu"))
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    loop.run_student(params, session, ctx)

    clean = load_dataset("digits", seed=params.split_seed)
    teacher_data, student_data = seen
    assert torch.equal(teacher_data.train_y, student_data.train_y)
    changed = (student_data.train_y != clean.train_y).float().mean().item()
    assert changed == pytest.approx(int(len(clean.train_y) * 0.3) / len(clean.train_y))
    for data in seen:
        assert torch.equal(data.val_y, clean.val_y) and torch.equal(data.test_y, clean.test_y)
    assert session.last["label_noise_rate"] == pytest.approx(changed)
    assert ctx.artifacts.get_or_create("teacher", loop.teacher_recipe(params), None).meta["label_noise_rate"] == \
        pytest.approx(changed)


def test_summary_groups_by_method_and_noise_setting():
    """The seed-style summary: one line per method x noise setting, mean over seeds."""
    from orchestrator.reports.rows import TrialRow
    from orchestrator.reports.summary import summarize
    from trainables.runtime.trainable import get_trainable

    rows, accs = [], {}
    for i, (loss, kind, rate, seed) in enumerate([(loss, kind, rate, seed) for loss in ("kd", "adaptconf")
                                                   for kind, rate in (("symmetric", 0.2), ("asymmetric", 0.4))
                                                   for seed in (0, 1)]):
        acc = 0.5 + 0.01 * i
        accs.setdefault((loss, kind), []).append(acc)
        config = {"loss": loss, "seed": seed, "label_noise": {"kind": kind, "rate": rate},
                  "teacher": {"model": "preact_resnet18"}, "student": "preact_resnet34"}
        rows.append(TrialRow(trial_id=f"t{i}", status="completed",
                             params={"loss": loss, "seed": seed, "label_noise.kind": kind, "label_noise.rate": rate},
                             metrics={"val_acc": acc, "test_acc": acc}, config=config))
    entries = summarize(rows, ["loss", "seed", "label_noise.kind", "label_noise.rate"], "val_acc", "max",
                        get_trainable("distill").vocabulary)
    got = {(e.group["method"], e.group["noise"]): (e.group["noise rate"], e.top1_mean, e.seeds) for e in entries}
    assert len(got) == 4
    for (loss, kind), values in accs.items():
        assert got[(loss, kind)] == ("0.2" if kind == "symmetric" else "0.4", pytest.approx(np.mean(values)), 2)


def conv(cin, cout, k):
    return cin * cout * k * k


def bn(c):
    return 2 * c


def preact_params(blocks, classes, cin=3):
    """Parameters of the published PreAct-ResNet (Sel-CL's, classifier only) by formula."""
    total = conv(cin, 64, 3) + bn(64)  # stem conv + BN
    c = 64
    for width, n in zip((64, 128, 256, 512), blocks):
        for b in range(n):
            total += bn(c) + conv(c, width, 3) + bn(width) + conv(width, width, 3)
            if c != width:
                total += conv(c, width, 1)  # projection shortcut, no BN
            c = width
    return total + 512 * classes + classes


@pytest.mark.parametrize("name,blocks", [("preact_resnet18", (2, 2, 2, 2)), ("preact_resnet34", (3, 4, 6, 3))])
@pytest.mark.parametrize("classes", [10, 100])
def test_preact_resnet_shapes_and_parameter_counts(name, blocks, classes):
    from trainables.models import create_model

    model = create_model(name, num_classes=classes, input_shape=(3, 32, 32)).eval()
    assert sum(p.numel() for p in model.parameters()) == preact_params(blocks, classes)
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, classes) and feats.shape == (2, 512) == (2, model.num_features)
    assert torch.allclose(model.forward_head(model.forward_features(x)), logits)
    # Grey-scale 8x8 digits go through the same network (adaptive pooling, 1-channel stem).
    small = create_model(name, num_classes=10, input_shape=(1, 8, 8)).eval()
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_preact_resnet18_parameter_count_matches_the_quoted_resnet18_figure():
    """From the widely quoted 11,173,962 parameters of kuangliu's CIFAR ResNet18 (10 classes), by the
    architectural differences: pre-activation moves the first BN of the three down-sampling blocks
    from the output width to the input width (-2 x (64 + 128 + 256 - 128 - 256 - 512)), and the
    projection shortcuts have no BN (-2 x (128 + 256 + 512)); both have the stem BN."""
    from trainables.models import create_model

    expected = 11_173_962 - 2 * (128 + 256 + 512 - 64 - 128 - 256) - 2 * (128 + 256 + 512)
    model = create_model("preact_resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_the_driver_prepares_the_noisy_teacher_when_the_noise_is_fixed(tmp_path):
    """prepare_distill trains the teacher up front: with label_noise fixed it must be the noisy one
    (the entry every trial then looks up), and with label_noise searched it leaves it to the trials."""
    from orchestrator.store.cache import ArtifactCache
    from trainables.distill.loop import teacher_recipe
    from trainables.distill.params import DistillParams
    from trainables.distill.prepare import prepare_distill
    from trainables.runtime.trainable import TrialContext

    fixed = {"dataset": "digits", "teacher": {"model": "cnn_small", "epochs": 1},
             "label_noise": {"kind": "symmetric", "rate": 0.2, "seed": 3}}
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    out = prepare_distill(fixed, {"seed"}, ctx)
    trial_entry = ctx.artifacts.get_or_create("teacher", teacher_recipe(DistillParams(**fixed)), None)
    assert out["teacher_cache_id"] == trial_entry.key and trial_entry.meta["label_noise_rate"] > 0.15
    assert prepare_distill(fixed, {"seed", "label_noise.rate"}, ctx) is None
