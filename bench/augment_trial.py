"""The training-recipe augmentation inside a real distill trial: images/s of a steady epoch (the
last one, evaluation included) for a student trained with each recipe, in one run, as ratios
against the un-augmented trial. Runs the trainable in-process (no Ray), so it also checks on a
GPU that the prefetching loader, kornia and timm's mixup work inside the training loop.

    .venv/bin/python bench/augment_trial.py                                              # CPU size
    .venv/bin/python bench/augment_trial.py --student resnet8x4 --image-size 32 \\
        --train-size 20000 --batch-size 512 --classes 100 --epochs 3                      # GPU

Recipes: ``none`` (teacher logits cached), ``flip_crop`` (cached views), ``rrc_flip_mixup``
(teacher online), ``cifar_v1`` (rrc_flip + AutoAugment + mixup 0.1, teacher online) and
``seed002`` (rrc_flip + RandAugment + erasing + mixup/cutmix, teacher online). The teacher is
trained once (1 epoch) and cached. Appends one JSON line to bench/results/augment_trial.jsonl.
"""
from __future__ import annotations

import argparse
import tempfile


from common import add_size_args, pick_device, record, timed_session  # noqa: E402  (sets sys.path)
from orchestrator.store.cache import ArtifactCache  # noqa: E402
from trainables.distill.trainable import run_distill  # noqa: E402
from trainables.distill.params import DistillParams  # noqa: E402
from trainables.runtime.trainable import TrialContext  # noqa: E402

RECIPES = {
    "none": {},
    "flip_crop": {"augment": "flip_crop", "teacher_views": 4},
    "rrc_flip_mixup": {"augment": "rrc_flip", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "teacher_mode": "online"},
    "cifar_v1": {"augment": "rrc_flip", "auto_augment": "autoaugment_imagenet", "mixup_alpha": 0.1,
                 "teacher_mode": "online"},
    "seed002": {"augment": "rrc_flip", "auto_augment": "randaugment", "random_erasing": 0.25, "mixup_alpha": 0.8,
                "cutmix_alpha": 1.0, "teacher_mode": "online"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(ap, image_size=16, train_size=512, batch_size=64, student="cnn_small", teacher="cnn_small")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = ap.parse_args()
    device = pick_device(args.device)
    data = {"dataset": "synthetic", "dataset_kwargs": {"channels": 3, "image_size": args.image_size,
                                                        "num_classes": args.classes, "train_size": args.train_size}}
    teacher = {"model": args.teacher, "epochs": 1, "batch_size": args.batch_size, "lr": 0.05}
    figures, ratios = {}, {}
    with tempfile.TemporaryDirectory() as cache:
        ctx = TrialContext(artifacts=ArtifactCache(cache), checkpoint_every=0)
        for name in args.recipes:
            params = DistillParams(**data, teacher=teacher, student=args.student, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=0.05, loss="kd", **RECIPES[name])
            session = timed_session(device)
            final = run_distill(params, session, ctx)
            steady = session.times[-1] - session.times[-2]
            n = args.train_size  # the synthetic loader draws train_size training images
            figures[f"{name}_images_per_s"] = n / steady
            figures[f"{name}_val_acc"] = final["val_acc"]
            print(f"  {name}: {n / steady:,.0f} img/s (steady epoch, eval included), val_acc {final['val_acc']:.3f}")
    base = figures.get("none_images_per_s")
    if base:
        ratios = {f"{k.removesuffix('_images_per_s')}_over_none": v / base for k, v in figures.items()
                  if k.endswith("_images_per_s") and k != "none_images_per_s"}
    print(f"augment_trial on {device}: {args.student} <- {args.teacher}, {args.image_size} px, batch {args.batch_size}")
    record("augment_trial", device, vars(args), figures, ratios)


if __name__ == "__main__":
    main()
