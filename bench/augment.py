"""Is the training-recipe augmentation the bottleneck? For each recipe (flip_crop, rrc_flip,
kornia's randaugment, autoaugment and trivialaugment, timm's rand-m9-mstd0.5-inc1 and
original-mstd0.5 drawn per image, mixup/cutmix, erasing, and seed 002's full recipe),
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
erasing, timm mixup). It is timmed two ways in the same run: in series with the step, and
prefetched on a side thread and CUDA stream as the loop runs it on a GPU
(:mod:`trainables.runtime.prefetch`). On a GPU the run also counts the host syncs the loader makes
per batch (``torch.cuda.set_sync_debug_mode``). The step is bf16 (on CUDA), channels_last, cross-entropy against the
(soft) targets, SGD. On the CPU the loader shares the cores with the step, so ratios there are a
lower bound. Appends one JSON line per recipe to bench/results/augment.jsonl.
"""
from __future__ import annotations

import argparse

import torch

from common import add_size_args, median_of, record, sgd_train_step, sized_inputs  # noqa: E402  (sets sys.path)
from trainables.data.timm_policy import is_timm_config  # noqa: E402
from trainables.runtime.engine import epoch_batches  # noqa: E402
from trainables.runtime.prefetch import prefetched  # noqa: E402
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
    # timm's policies from the authors' strings, drawn per image on the device (trainables/data/timm_policy.py)
    "timm_randaugment": {"augment": "rrc_flip", "auto_augment": "rand-m9-mstd0.5-inc1"},
    "timm_autoaugment": {"augment": "flip_crop", "auto_augment": "original-mstd0.5"},
    "mixup_cutmix": {"augment": "rrc_flip", "mixup_alpha": 0.8, "cutmix_alpha": 1.0},
    "erasing": {"augment": "rrc_flip", "random_erasing": 0.25},
    # seed 002 (weight selection), as its spaces run it: timm's rand-m9-mstd0.5-inc1, mixup 0.8 /
    # cutmix 1.0, erasing 0.25
    "seed002": {"augment": "rrc_flip", "auto_augment": "rand-m9-mstd0.5-inc1", "policy_interpolation": "bicubic",
                "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
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
    step = sgd_train_step(args.model, args.classes, shape, device)
    session = LocalSession(device)
    ready = [(x[idx], y[idx]) for idx in epoch_batches(len(y), args.batch_size, 0, 0, session, device,
                                                       drop_last=True)]

    def step_only():
        for xb, yb in ready:
            step(xb, yb)

    step_only()  # warm-up (cuDNN autotuning, allocator)
    for name in args.recipes:
        kornia = not is_timm_config(RECIPES[name].get("auto_augment", "none"))  # groups: kornia's policies only
        recipe = AugmentParams(**RECIPES[name], **({"policy_groups": args.policy_groups} if kornia else {}))
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

        def make(idx):
            return per_step(views.batch(x, idx)[0], y[idx])

        def both_prefetched():
            views.start_epoch(0)
            idxs = list(epoch_batches(len(y), args.batch_size, 0, 0, session, device, drop_last=True))
            for xb, targets in prefetched(make, idxs, device):
                step(xb, targets)

        loader_only()  # warm-up
        both()
        both_prefetched()
        seconds = median_of({"step_only": step_only, "loader_only": loader_only, "loader_and_step": both,
                             "loader_and_step_prefetched": both_prefetched}, device, args.rounds)
        n = len(ready) * args.batch_size
        figures = {f"{k}_images_per_s": n / s for k, s in seconds.items()}
        figures["host_syncs_per_batch"] = count_syncs(make, y, args.batch_size, device)
        print(f"augment {name} on {device}: {args.model}, {shape}, batch {args.batch_size}")
        record("augment", device, {**vars(args), "recipe": name, "recipe_keys": RECIPES[name]}, figures,
               {"loader_and_step_over_step": seconds["step_only"] / seconds["loader_and_step"],
                "prefetched_over_step": seconds["step_only"] / seconds["loader_and_step_prefetched"],
                "serial_estimate_over_step": seconds["step_only"] / (seconds["step_only"] + seconds["loader_only"])})


def count_syncs(make, y, batch_size: int, device: torch.device) -> int | None:
    """Host syncs one loader batch makes (GPU only): torch warns once per syncing call."""
    if device.type != "cuda":
        return None
    import warnings

    idx = torch.arange(batch_size, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            make(idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    main()
