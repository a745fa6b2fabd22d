"""A 16-trial KD sweep (augmented student batches) with the teacher's outputs cached once and
shared by every trial, against the same sweep recomputing the teacher in every trial (a teacher
forward on every step, as the seed codebases do), measured in the same run. Goal: cached <= 0.6x
the time at CIFAR-like teacher/student cost ratios (teacher forward ~ student train step).

The cached sweep goes through the real path: the artifact cache's ``teacher_views`` entry (K fixed
augmented views per image, built by the first trial, read by the other 15), ``FixedViews`` in
``sampled`` order and ``CachedTeacher``; the baseline uses ``RandomViews`` and ``OnlineTeacher``.
Trials run one after another in this process (the Tune/MLflow overhead is bench/overhead.py's).

    .venv/bin/python bench/sweep_amortisation.py                          # CPU size
    .venv/bin/python bench/sweep_amortisation.py --student resnet20 --teacher resnet56 \\
        --image-size 32 --classes 100 --train-size 10000 --epochs 4 --views 4 --batch-size 256   # GPU

Appends a JSON line to bench/results/sweep_amortisation.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile

import torch

from common import add_size_args, record, sized_inputs, timed  # noqa: E402  (sets sys.path)
from orchestrator.store.cache import ArtifactCache  # noqa: E402
from trainables.training.classifier_loop import CachedTeacher, OnlineTeacher, OptimConfig, train_classifier  # noqa: E402
from trainables.data import DatasetSplits  # noqa: E402
from trainables.data.augment import Augment  # noqa: E402
from trainables.runtime.engine import predict  # noqa: E402
from trainables.losses import create_loss  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402
from trainables.training.views import FixedViews, RandomViews, teacher_view_logits, view_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="cnn_small")
    ap.add_argument("--teacher", default="resnet14")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--views", type=int, default=2, help="K cached augmented views per image")
    ap.add_argument("--trials", type=int, default=16)
    add_size_args(ap, image_size=12, train_size=192, batch_size=64)
    args = ap.parse_args()
    device, shape, x, y = sized_inputs(args)
    few = slice(0, 16)
    data = DatasetSplits("synthetic", x, y, x[few], y[few], x[few], y[few], args.classes, (0.0,) * 3, (1.0,) * 3)
    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=args.classes, input_shape=shape).to(device).eval()
    student0 = create_model(args.student, num_classes=args.classes, input_shape=shape).to(device)
    aug = Augment("flip_crop", pad=2)

    def trial(seed: int, teacher_signal, views) -> None:
        loss = (create_loss("kd", {"temperature": 4.0}, num_classes=args.classes) if teacher_signal
                else create_loss("ce"))
        train_classifier(model=copy.deepcopy(student0), data=data, loss_fn=loss, session=LocalSession(device),
                         seed=seed, teacher=teacher_signal, views=views,
                         optim=OptimConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05))

    recipe = {"teacher": args.teacher, "augment": aug.recipe(), "views": args.views, "view_seed": 0,
              "n": args.train_size, "image_size": args.image_size}

    def build(out_dir: str) -> dict:
        params = view_params(aug, args.train_size, shape, args.views, 0)
        torch.save(teacher_view_logits(teacher, x, aug, params).cpu(), os.path.join(out_dir, "view_logits.pt"))
        return {}

    def cached_trial(cache: ArtifactCache, seed: int) -> None:
        entry = cache.get_or_create("teacher_views", recipe, build)  # built by the first trial only
        logits = torch.load(entry.file("view_logits.pt"), map_location=device)
        params = view_params(aug, args.train_size, shape, args.views, 0)
        trial(seed, CachedTeacher(logits), FixedViews(aug, params, args.views, "sampled", seed, device))

    trial(0, OnlineTeacher(teacher), RandomViews(aug, 0, device))  # warm-up
    teacher_fwd = timed(lambda: predict(teacher, x, args.batch_size), device)
    student_epoch = timed(lambda: trial(0, None, None), device) / args.epochs
    # The two sweeps' trials alternate (cached trial i, online trial i, ...) so that slow phases of
    # a shared machine hit both sweeps alike; each sweep's time is the sum of its trials'.
    cached = online = 0.0
    with tempfile.TemporaryDirectory() as root:
        cache = ArtifactCache(root)
        for seed in range(args.trials):
            cached += timed(lambda: cached_trial(cache, seed), device)
            online += timed(lambda: trial(seed, OnlineTeacher(teacher), RandomViews(aug, seed, device)), device)
        assert cache.stats.misses == 1 and cache.stats.hits == args.trials - 1
    print(f"sweep_amortisation on {device}: {args.trials} trials x {args.epochs} epochs, {args.views} cached views")
    record("sweep_amortisation", device, vars(args),
           {"cached_sweep_s": cached, "online_sweep_s": online,
            "teacher_forward_over_student_epoch": teacher_fwd / student_epoch},
           {"cached_over_online": cached / online})


if __name__ == "__main__":
    main()
