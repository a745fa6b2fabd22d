"""Is the training-recipe augmentation the bottleneck? For each recipe (flip_crop, rrc_flip,
randaugment, autoaugment, trivialaugment, mixup/cutmix, erasing, and seed 002's full recipe),
images/s of the augmentation alone, and (loader + step) / step: the model's train step on
pre-made batches against the same step fed by the on-device loader with that recipe, measured in
the same run. Goals on a GPU: >= 0.95 for the CIFAR recipes (flip_crop, rrc_flip, autoaugment,
mixup/cutmix), >= 0.90 for RandAugment + mixup.

    .venv/bin/python bench/augment.py                                                # CPU size
    .venv/bin/python bench/augment.py --model resnet8x4 --image-size 32 --train-size 16384 \\
        --batch-size 512 --classes 100                                               # GPU, CIFAR
    .venv/bin/python bench/augment.py --model vit_tiny --image-size 224 --train-size 2048 \\
        --batch-size 128 --classes 100 --recipes rrc_flip randaugment seed002        # GPU, ViT-T

The loader is the distill loop's: index the on-device data, the geometric view
(``RandomViews``), then :class:`~trainables.training.batch_augment.BatchAugment` (kornia policy,
erasing, timm mixup). The step is bf16 (on CUDA), channels_last, cross-entropy against the
(soft) targets, SGD. On the CPU the loader shares the cores with the step, so ratios there are a
lower bound. Appends one JSON line per recipe to bench/results/augment.jsonl.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import add_size_args, median_of, record, sized_inputs  # noqa: E402  (sets sys.path)
from trainables.models import create_model  # noqa: E402
from trainables.runtime.engine import autocast, build_optimizer, epoch_batches  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402
from trainables.training.batch_augment import batch_augment_of, geometric_of  # noqa: E402
from trainables.training.recipe import AugmentParams  # noqa: E402
from trainables.training.views import RandomViews  # noqa: E402

RECIPES = {
    "flip_crop": {"augment": "flip_crop"},
    "rrc_flip": {"augment": "rrc_flip"},
    "randaugment": {"augment": "rrc_flip", "auto_augment": "randaugment"},
    "autoaugment": {"augment": "flip_crop", "auto_augment": "autoaugment_cifar10"},
    "trivialaugment": {"augment": "flip_crop", "auto_augment": "trivialaugment"},
    "mixup_cutmix": {"augment": "rrc_flip", "mixup_alpha": 0.8, "cutmix_alpha": 1.0},
    "erasing": {"augment": "rrc_flip", "random_erasing": 0.25},
    # seed 002 (weight selection): RandAugment m9, mixup 0.8 / cutmix 1.0, erasing 0.25
    "seed002": {"augment": "rrc_flip", "auto_augment": "randaugment", "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                "random_erasing": 0.25},
}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--policy-groups", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    add_size_args(ap, image_size=16, train_size=256, batch_size=64)
    args = ap.parse_args()
    device, shape, x, y = sized_inputs(args)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.classes, input_shape=shape).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer("sgd", model.parameters(), 0.05, 5e-4, 0.9, device)
    session = LocalSession(device)
    ready = [(x[idx], y[idx]) for idx in epoch_batches(len(y), args.batch_size, 0, 0, session, device,
                                                       drop_last=True)]

    def step(xb, targets):
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            loss = F.cross_entropy(model(xb).float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_only():
        for xb, yb in ready:
            step(xb, yb)

    step_only()  # warm-up (cuDNN autotuning, allocator)
    for name in args.recipes:
        recipe = AugmentParams(policy_groups=args.policy_groups, **RECIPES[name])
        views = RandomViews(geometric_of(recipe), seed=0, device=device)
        per_step = batch_augment_of(recipe, MEAN, STD, args.classes)

        def batches():
            views.start_epoch(0)
            for idx in epoch_batches(len(y), args.batch_size, 0, 0, session, device, drop_last=True):
                yield per_step(views.batch(x, idx)[0], y[idx])

        def loader_only():
            for xb, _ in batches():
                xb.sum()  # consume it, as the step would

        def both():
            for xb, targets in batches():
                step(xb, targets)

        loader_only()  # warm-up
        both()
        seconds = median_of({"step_only": step_only, "loader_only": loader_only, "loader_and_step": both},
                            device, args.rounds)
        n = len(ready) * args.batch_size
        figures = {f"{k}_images_per_s": n / s for k, s in seconds.items()}
        print(f"augment {name} on {device}: {args.model}, {shape}, batch {args.batch_size}")
        record("augment", device, {**vars(args), "recipe": name, "recipe_keys": RECIPES[name]}, figures,
               {"loader_and_step_over_step": seconds["step_only"] / seconds["loader_and_step"],
                "serial_estimate_over_step": seconds["step_only"] / (seconds["step_only"] + seconds["loader_only"])})


if __name__ == "__main__":
    main()
