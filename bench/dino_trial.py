"""Images/s of a dino trial's steady training epoch for each encoder, in one run, against the
first encoder named (default: the paper's v2 config, VGG11 with a 65,536-d head, and the same
config with the tiny-input ResNet-18 the paper's other configs use). Runs the trainable
in-process (no Ray); probes run only after the last epoch, and the timed epoch excludes them.

    .venv/bin/python bench/dino_trial.py                                                   # CPU size
    .venv/bin/python bench/dino_trial.py --train-size 20000 --image-size 32 --batch-size 256 --epochs 3  # GPU

``--fused K`` also times K trials of the first encoder (each its own lr and teacher seed), one
after another, against one fused trial of the same K members (``vectorize: K``), steady epochs:
member images/s and their ratio.

Appends one JSON line to bench/results/dino_trial.jsonl.
"""
from __future__ import annotations

import argparse

from common import pick_device, record, timed_session  # noqa: E402  (sets sys.path)
from trainables.dino.trainable import run_dino  # noqa: E402
from trainables.dino.params import DinoParams  # noqa: E402
from trainables.runtime.trainable import TrialContext  # noqa: E402


def v2_config(encoder: str, args) -> DinoParams:
    """The paper's v2 config (random_teacher_cifar10.yaml) on CIFAR-shaped synthetic data."""
    return DinoParams(
        dataset="synthetic", dataset_kwargs={"channels": 3, "image_size": args.image_size, "num_classes": 10,
                                             "train_size": args.train_size},
        encoder=encoder,
        head={"hidden_dims": [2048, 2048], "bottleneck_dim": 256, "out_dim": args.out_dim, "activation": "gelu",
              "batch_norm": False, "weight_norm": False, "init": "trunc_normal"},
        crops={"global_crops": 1, "global_scale": [1.0, 1.0], "local_crops": 0, "hflip": False},
        loss_params={"teacher_temp": 1.0, "student_temp": 1.0, "teacher_center_momentum": float("nan"),
                     "student_center_momentum": float("nan"), "pairing": "same", "objective": "ce"},
        teacher_mode="no_update", teacher_eval=True, epochs=args.epochs, warmup_epochs=0, batch_size=args.batch_size,
        optimizer="adamw", lr=1e-3, weight_decay=0.0, schedule="constant", clip_grad=0.0,
        freeze_last_layer_epochs=0, probe_every=10_000, knn_k=20, knn_temperature=None, probe_epochs=1)


def steady_epoch(p: DinoParams, device) -> float:
    """Seconds of the trial's epoch before the last (whose report follows the probes): steady, no probe."""
    session = timed_session(device)
    run_dino(p, session, TrialContext(checkpoint_every=0))
    return session.times[-2] - session.times[-3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", nargs="+", default=["vgg11", "resnet18_tiny"])
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fused", type=int, default=0, help="K: K sequential trials against one fused trial of K")
    args = ap.parse_args()
    device = pick_device(args.device)
    figures = {}
    for encoder in args.encoders:
        steady = steady_epoch(v2_config(encoder, args), device)
        figures[f"{encoder}_images_per_s"] = args.train_size / steady
        print(f"  {encoder}: {args.train_size / steady:,.0f} img/s (steady epoch)")
    base = args.encoders[0]
    ratios = {f"{e}_over_{base}": figures[f"{e}_images_per_s"] / figures[f"{base}_images_per_s"]
              for e in args.encoders[1:]}
    if args.fused:
        config = v2_config(base, args).model_dump(exclude_unset=True)
        members = [{"lr": 1e-3 * (k + 1), "teacher_init_seed": k} for k in range(args.fused)]
        sequential = 0.0
        for member in members:
            sequential += steady_epoch(DinoParams.model_validate({**config, **member}), device)
        fused = steady_epoch(DinoParams.model_validate({**config, "vectorize": args.fused, "probes": members}), device)
        images = args.fused * args.train_size
        figures.update(sequential_member_images_per_s=images / sequential, fused_member_images_per_s=images / fused)
        ratios["fused_over_sequential"] = sequential / fused
        print(f"  {args.fused} members of {base}: sequential {images / sequential:,.0f}, fused {images / fused:,.0f} "
              f"member img/s ({sequential / fused:.2f}x)")
    print(f"dino_trial on {device}: {args.image_size} px, batch {args.batch_size}, head {args.out_dim}")
    record("dino_trial", device, vars(args), figures, ratios)


if __name__ == "__main__":
    main()
