"""The few-shot experiment: episodic evaluation against hand-computed cases, seeded episodes,
Meta-Baseline's temperature, the few-shot ResNets, the miniImageNet loader on generated files,
parse-time refusals, the seed summary's per-shot columns, and the digits variant end to end (slow)."""
import math
import os
import pickle
import statistics

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from trainables.training.fewshot import (Episodes, MetaBaseline, evaluate_features, sample_episodes,
                                         summarize_episodes)


def test_two_way_one_shot_by_hand():
    # Class 0: images 0, 1; class 1: images 2, 3. Prototypes are the support features themselves.
    feats = torch.tensor([[1.0, 0.0],    # 0: support of class 0 (episode 0)
                          [2.0, 0.4],    # 1: query of class 0: cos to (1,0) 0.98, to (0,1) 0.20 -> right
                          [0.0, 3.0],    # 2: support of class 1 (episode 0)
                          [1.0, 0.5]])   # 3: query of class 1: cos to (1,0) 0.89, to (0,1) 0.45 -> wrong
    one = Episodes(support=torch.tensor([[[0], [2]]]), query=torch.tensor([[[1], [3]]]))
    assert evaluate_features(feats, one).acc == pytest.approx(0.5)
    # Episode 2 swaps support and query: prototypes (2,0.4) and (1,0.5); query 0 (1,0): cos 0.98 vs
    # 0.89 -> class 0, right; query 2 (0,1): cos 0.20 vs 0.45 -> class 1, right.
    two = Episodes(support=torch.tensor([[[0], [2]], [[1], [3]]]), query=torch.tensor([[[1], [3]], [[0], [2]]]))
    result = evaluate_features(feats, two)
    assert result.per_episode.tolist() == [0.5, 1.0]
    assert result.acc == pytest.approx(0.75)
    assert result.ci95 == pytest.approx(1.96 * statistics.stdev([0.5, 1.0]) / math.sqrt(2))


def test_confidence_interval_is_1_96_std_over_sqrt_episodes():
    accs = torch.tensor([0.2, 0.4, 0.4, 0.6, 1.0, 0.8, 0.6])
    r = summarize_episodes(accs)
    assert r.acc == pytest.approx(statistics.fmean(accs.tolist()))
    assert r.ci95 == pytest.approx(1.96 * statistics.stdev(accs.tolist()) / math.sqrt(len(accs)), rel=1e-5)


def test_prototype_is_the_mean_of_the_support_features():
    # 2-way 2-shot: class 0 supports (1,0) and (0,1) average to (0.5,0.5); the query (1,1.1) is
    # nearer that prototype (cos 0.999) than class 1's (1,-1) (cos -0.05).
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [2.0, -2.0], [1.0, 1.1], [3.0, -2.9]])
    ep = Episodes(support=torch.tensor([[[0, 1], [2, 3]]]), query=torch.tensor([[[4], [5]]]))
    assert evaluate_features(feats, ep).acc == 1.0


def test_seeded_episodes_are_reproducible_and_well_formed():
    labels = torch.arange(10).repeat_interleave(torch.tensor([7, 9, 8, 7, 12, 7, 7, 8, 9, 10]))
    draw = lambda seed: sample_episodes(labels, 5, 2, 3, 50, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert not torch.equal(a.support, c.support)
    assert a.support.shape == (50, 5, 2) and a.query.shape == (50, 5, 3)
    both = torch.cat([a.support, a.query], dim=2)  # (E, W, 5)
    cls = labels[both]
    assert (cls == cls[..., :1]).all()  # every image of a way is of that way's class
    assert all(len(set(cls[e, :, 0].tolist())) == 5 for e in range(50))  # 5 distinct classes
    assert all(len(set(both[e].flatten().tolist())) == 25 for e in range(50))  # no image twice


def test_episodes_refuse_classes_too_small():
    labels = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="smallest class has 2"):
        sample_episodes(labels, 2, 1, 2, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="3-way episodes need 3 classes, the split has 2"):
        sample_episodes(labels, 3, 1, 1, 3, torch.Generator().manual_seed(0))


def test_meta_baseline_temperature_receives_a_gradient():
    from trainables.models import create_model

    enc = create_model("resnet12_fsl", num_classes=4, input_shape=(3, 16, 16), channels=(4, 4, 8, 8))
    meta = MetaBaseline(enc, temperature=10.0)
    x = torch.randn(12, 3, 16, 16)
    y = torch.arange(4).repeat_interleave(3)
    ep = sample_episodes(y, 3, 1, 2, 2, torch.Generator().manual_seed(0))
    logits = meta(x, ep)
    assert logits.shape == (2 * 3 * 2, 3)
    labels = torch.arange(3).repeat_interleave(2).repeat(2)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert meta.temperature.grad is not None and meta.temperature.grad.abs() > 0
    assert all(p.grad is not None for p in enc.stages.parameters())


def resnet_params(blocks, channels, cin, classes):
    total, c_prev = 0, cin
    for n, c in zip(blocks, channels):
        for b in range(n):
            ci = c_prev if b == 0 else c
            total += 9 * ci * c + 2 * 9 * c * c + 3 * 2 * c  # three 3x3 convs (no bias), three BNs
            if b == 0:
                total += ci * c + 2 * c  # the 1x1 projection and its BN
        c_prev = c
    return total + channels[-1] * classes + classes


@pytest.mark.parametrize("name,blocks,channels", [("resnet12_fsl", (1, 1, 1, 1), (64, 160, 320, 640)),
                                                  ("resnet12_bottle", (1, 1, 1, 1), (64, 128, 256, 512)),
                                                  ("resnet18_bottle", (1, 2, 2, 1), (64, 128, 256, 512)),
                                                  ("resnet36_bottle", (2, 3, 5, 2), (64, 128, 256, 512))])
def test_fewshot_resnets_shape_and_parameter_count(name, blocks, channels):
    from trainables.models import create_model

    model = create_model(name, num_classes=64, input_shape=(3, 84, 84))
    assert sum(p.numel() for p in model.parameters()) == resnet_params(blocks, channels, 3, 64)
    assert sum(3 * n for n in blocks) == int(name[6:8])  # 3 convs per block: the name's depth
    model.eval()
    logits, feats = model(torch.randn(2, 3, 84, 84), return_features=True)
    assert feats.shape == (2, channels[-1]) and logits.shape == (2, 64)
    # 84 -> 42 -> 21 -> 10 -> 5: the last feature map before pooling.
    assert model.stages(torch.randn(1, 3, 84, 84)).shape[-2:] == (5, 5)


# --------------------------------------------------------------------------- miniImageNet on generated files

def write_pickles(root, classes=None, per_class=5, base_held=False):
    src = os.path.join(root, "mini-imagenet")
    os.makedirs(src)
    rng = np.random.default_rng(0)
    classes = classes or {"train_phase_train": range(0, 4), "val": range(4, 6), "test": range(6, 9)}
    if base_held:
        classes = {**classes, "train_phase_val": range(0, 4), "train_phase_test": range(0, 4)}
    for split, ids in classes.items():
        labels = [c for c in ids for _ in range(per_class)]
        blob = {"data": rng.integers(0, 255, (len(labels), 84, 84, 3), dtype=np.uint8), "labels": labels}
        with open(os.path.join(src, f"miniImageNet_category_split_{split}.pickle"), "wb") as f:
            pickle.dump(blob, f)
    return src


def test_mini_imagenet_from_pickles(tmp_path):
    from trainables.data import NOVEL_KEY, load_dataset

    write_pickles(str(tmp_path), per_class=20)
    d = load_dataset("mini_imagenet", seed=0, data_root=str(tmp_path), holdout=(0.1, 0.1))
    assert d.num_classes == 4 and d.input_shape == (3, 84, 84) and d.meta["layout"] == "pickle"
    assert d.sizes() == {"train": 64, "val": 8, "test": 8}
    novel = d.meta[NOVEL_KEY]
    assert novel.x.shape == (60, 3, 84, 84) and novel.class_sizes().tolist() == [20, 20, 20]  # test: 3 classes, 0-based
    val_novel = load_dataset("mini_imagenet", seed=0, data_root=str(tmp_path), novel_split="val").meta[NOVEL_KEY]
    assert val_novel.class_sizes().tolist() == [20, 20]


def test_mini_imagenet_uses_the_base_held_out_pickles_when_present(tmp_path):
    from trainables.data import load_dataset

    write_pickles(str(tmp_path), per_class=3, base_held=True)
    d = load_dataset("mini_imagenet", seed=0, data_root=str(tmp_path))
    assert d.sizes() == {"train": 12, "val": 12, "test": 12}


def test_mini_imagenet_from_folders(tmp_path):
    from PIL import Image

    from trainables.data import NOVEL_KEY, load_dataset

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for c in range(n):
            folder = tmp_path / "mini-imagenet" / split / f"n0{split}{c}"
            folder.mkdir(parents=True)
            for i in range(10):
                size = 84 if i % 2 else 100  # other sizes are resized
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    d = load_dataset("mini_imagenet", seed=0, data_root=str(tmp_path), layout="folder", holdout=(0.2, 0.2))
    assert d.meta["layout"] == "folder" and d.num_classes == 3 and d.input_shape == (3, 84, 84)
    assert d.sizes() == {"train": 18, "val": 6, "test": 6}
    assert d.meta[NOVEL_KEY].class_sizes().tolist() == [10, 10]


def test_mini_imagenet_missing_names_the_expected_files(tmp_path):
    from trainables.data import DatasetUnavailable, check_dataset

    with pytest.raises(DatasetUnavailable) as info:
        check_dataset("mini_imagenet", data_root=str(tmp_path))
    message = str(info.value)
    assert "miniImageNet_category_split_train_phase_train.pickle" in message and "train/, val/, test/" in message
    assert str(tmp_path / "mini-imagenet") in message and "\n" not in message


def test_digits_fewshot_keeps_novel_classes_out_of_training():
    from trainables.data import NOVEL_KEY, load_dataset

    d = load_dataset("digits_fewshot", seed=0)
    assert d.num_classes == 6 and int(d.train_y.max()) == 5 and int(d.test_y.max()) == 5
    novel = d.meta[NOVEL_KEY]
    assert novel.classes == ["6", "7", "8", "9"] and len(novel.y) == 174 + 179 + 180 + 181


# --------------------------------------------------------------------------- parse-time refusals

def distill(**fewshot):
    from trainables.distill.params import DistillParams

    return DistillParams(dataset="digits_fewshot", student="mlp_tiny", fewshot=fewshot)


def test_fewshot_refuses_more_ways_than_novel_classes():
    with pytest.raises(ValueError, match=r"fewshot.ways: 5-way episodes need 5 novel classes, dataset "
                                         r"'digits_fewshot' has 4 \(got 5\)"):
        distill(ways=5)


def test_fewshot_refuses_more_shots_and_queries_than_a_class_holds():
    with pytest.raises(ValueError, match=r"fewshot.shots: 170 shots \+ 15 queries take 185 images of a class, "
                                         r"dataset 'digits_fewshot' has 174"):
        distill(ways=4, shots=[1, 170])


def test_mini_imagenet_class_size_is_known_at_parse_time(tmp_path):
    from trainables.distill.params import DistillParams

    write_pickles(str(tmp_path), per_class=1)  # 600 per class is the dataset's, not read from the files
    with pytest.raises(ValueError, match=r"fewshot.shots: 600 shots \+ 15 queries take 615 .* has 600"):
        DistillParams(dataset="mini_imagenet", dataset_kwargs={"data_root": str(tmp_path)}, student="resnet12_fsl",
                      fewshot={"shots": [600]})
    with pytest.raises(ValueError, match=r"fewshot.ways: 17-way .* has 16 \(got 17\)"):
        DistillParams(dataset="mini_imagenet", dataset_kwargs={"data_root": str(tmp_path), "novel_split": "val"},
                      student="resnet12_fsl", fewshot={"ways": 17})


def test_fewshot_refuses_a_dataset_without_novel_classes():
    from trainables.distill.params import DistillParams

    with pytest.raises(ValueError, match="fewshot: dataset 'digits' has no novel classes"):
        DistillParams(dataset="digits", student="mlp_tiny", fewshot={})


def test_fewshot_accepts_the_digits_set_up():
    p = distill(ways=4, shots=[1, 5], meta_epochs=1)
    assert p.fewshot.ways == 4 and p.fewshot.shots == [1, 5]


def test_fewshot_metrics_are_searchable():
    from trainables.runtime.trainable import get_trainable

    doc = get_trainable("distill").metrics_doc
    assert {"fewshot_1shot_acc", "fewshot_5shot_acc", "fewshot_1shot_ci95", "fewshot_5shot_ci95"} <= set(doc)


def test_fewshot_hook_reports_every_shot_and_repeats_between_evaluations():
    from trainables.data import load_dataset
    from trainables.distill.fewshot import FewShotConfig, fewshot_hook
    from trainables.models import create_model

    d = load_dataset("digits_fewshot", seed=0)
    model = create_model("cnn_small", num_classes=6, input_shape=d.input_shape)
    cfg = FewShotConfig(ways=4, episodes=40, every=3, meta_epochs=1, meta_ways=3, meta_batches=2,
                        meta_episodes_per_batch=1)
    hook = fewshot_hook(cfg, d, 4, "ce", {}, torch.device("cpu"), None, seed=0)
    first = hook(model, 0)
    assert first["fewshot_epoch"] == 1 and set(first) >= {"fewshot_1shot_acc", "fewshot_5shot_ci95"}
    assert hook(model, 1) == first  # epoch 2: repeated, measured after epoch 1
    last = hook(model, 3)
    assert last["fewshot_epoch"] == 4 and "fewshot_classifier_5shot_acc" in last and "meta_temperature" in last
    assert 0.0 <= last["fewshot_5shot_acc"] <= 1.0


def test_seed_summary_shows_few_shot_columns_averaged_over_seeds():
    from orchestrator.reports.rows import TrialRow
    from orchestrator.reports.summary import format_summary, summarize
    from trainables.runtime.trainable import get_trainable

    rows = []
    for loss, base in (("ce", 0.5), ("adaptconf", 0.6)):
        for seed in (0, 1):
            rows.append(TrialRow(trial_id=f"{loss}{seed}", params={"loss": loss, "seed": seed},
                                 metrics={"fewshot_5shot_acc": base + 0.2 + 0.01 * seed, "test_acc": 0.9,
                                          "fewshot_1shot_acc": base + 0.02 * seed},
                                 status="completed", config={"loss": loss, "seed": seed}))
    entries = summarize(rows, ["loss", "seed"], "fewshot_5shot_acc", "max", get_trainable("distill").vocabulary)
    text = format_summary(entries)
    assert "fewshot_1shot_acc mean ± std" in text and "fewshot_5shot_acc mean ± std" in text
    ones = [0.6, 0.62]
    assert f"{statistics.fmean(ones):.4f} ± {statistics.stdev(ones):.4f} (n=2)" in text


@pytest.mark.slow
def test_digits_fewshot_variant_runs_end_to_end(space_sweep):
    import mlflow

    from orchestrator.space.spec import load_spec

    space = os.path.join(REPO, "search_spaces", "superalignment_fewshot_digits.yaml")
    # the same command test_seed_spaces.py runs for this variant: one sweep serves both
    tmp_path, proc, _ = space_sweep(space)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec = load_spec(space)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.sweep` = 's'")
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(trials) == spec.expected_trials() == 1
    metrics = trials[0].data.metrics
    for key in ("fewshot_1shot_acc", "fewshot_5shot_acc", "fewshot_classifier_5shot_acc"):
        assert 0.25 <= metrics[key] <= 1.0  # at least chance for 4-way
    assert 0.0 < metrics["fewshot_5shot_ci95"] < 0.1
    # More shots help a prototype classifier.
    assert metrics["fewshot_5shot_acc"] > metrics["fewshot_1shot_acc"]
