"""Is the on-device loader the bottleneck? Images/s of (a) the model's train step alone on
pre-made batches, (b) the loader alone (index the on-device dataset, augment the batch on the
device: flip_crop or rrc_flip), (c) both, as a distill trial runs them, measured in the same run.
Goal: c/a >= 0.95 (the loader costs at most 5% of the step).

    .venv/bin/python bench/data_pipeline.py                                   # CPU size
    .venv/bin/python bench/data_pipeline.py --model resnet18 --image-size 32 --train-size 50000 \\
        --batch-size 512 --augment rrc_flip                                   # GPU size

On the CPU the loader's tensor ops share the cores with the step, so c/a there is a lower bound
of what a GPU shows (where the loader's kernels are small beside the step's); the run also prints
a/(a+b time), the c/a that loader and step in series give, which load swings on a shared machine
disturb less than the measured c/a. Figures are per
second of CPU time on the CPU, of wall time on a GPU. Appends a JSON line to
bench/results/data_pipeline.jsonl.
"""
from __future__ import annotations

import argparse


from common import add_size_args, median_of, record, sgd_train_step, sized_inputs  # noqa: E402  (sets sys.path)
from trainables.data.augment import Augment  # noqa: E402
from trainables.runtime.engine import epoch_batches  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402
from trainables.training.views import RandomViews  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--augment", default="flip_crop", choices=["flip_crop", "rrc_flip"])
    ap.add_argument("--rounds", type=int, default=5)
    add_size_args(ap, image_size=16, train_size=256, batch_size=128)
    args = ap.parse_args()
    device, shape, x, y = sized_inputs(args)
    step = sgd_train_step(args.model, args.classes, shape, device)
    views = RandomViews(Augment(args.augment), seed=0, device=device)
    session = LocalSession(device)
    ready = [(x[idx], y[idx]) for idx in epoch_batches(len(y), args.batch_size, 0, 0, session, device)]

    def batches():
        views.start_epoch(0)
        for idx in epoch_batches(len(y), args.batch_size, 0, 0, session, device):
            yield views.batch(x, idx)[0], y[idx]

    def step_only():
        for xb, yb in ready:
            step(xb, yb)

    def loader_only():
        for xb, _ in batches():
            xb.sum()  # consume it, as the step would

    def both():
        for xb, yb in batches():
            step(xb, yb)

    variants = {"step_only": step_only, "loader_only": loader_only, "loader_and_step": both}
    for fn in variants.values():
        fn()  # warm-up
    seconds = median_of(variants, device, args.rounds)
    figures = {f"{k}_images_per_s": args.train_size / s for k, s in seconds.items()}
    print(f"data_pipeline on {device}: {args.model}, {shape}, batch {args.batch_size}, augment {args.augment}")
    record("data_pipeline", device, vars(args), figures,
           {"loader_and_step_over_step": seconds["step_only"] / seconds["loader_and_step"],
            "loader_over_step_throughput": seconds["step_only"] / seconds["loader_only"],
            # Loader and step in series on the same cores (the CPU case): what c/a would be without
            # noise. A shared machine's load swings move the measured c/a far more than the loader does.
            "serial_estimate_over_step": seconds["step_only"] / (seconds["step_only"] + seconds["loader_only"])})


if __name__ == "__main__":
    main()
