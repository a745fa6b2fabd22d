"""``compile`` inside a real distill trial: images/s of a steady epoch (the last one, evaluation
included) for each compile mode against eager, at each batch size, in one run; and the first
epoch's time, which holds the compilation (and, for ``reduce-overhead``, the CUDA-graph recording
of both the full and the last partial batch's shape). ``graphs`` is the trial as it runs by
default on a GPU (``cuda_graphs: auto``: each full step captured by hand once an epoch and
replayed, nothing compiled); ``eager`` sets ``cuda_graphs: false``. On a CPU ``graphs`` runs the
same steps eagerly, through the capture's code path.

    .venv/bin/python bench/compile_trial.py                                        # CPU size
    .venv/bin/python bench/compile_trial.py --student resnet8x4 --image-size 32 --classes 100 \\
        --train-size 20000 --batch-sizes 64,512 --epochs 3                        # GPU size

The student is distilled with KD from cached teacher logits (the teacher is trained once, 1 epoch,
and cached: its speed is not measured). Runs the trainable in-process (no Ray). Appends one JSON
line to bench/results/compile_trial.jsonl.
"""
from __future__ import annotations

import argparse
import tempfile

from common import add_size_args, pick_device, record, timed_session  # noqa: E402  (sets sys.path)
from orchestrator.store.cache import ArtifactCache  # noqa: E402
from trainables.distill.trainable import run_distill  # noqa: E402
from trainables.distill.params import DistillParams  # noqa: E402
from trainables.runtime.trainable import TrialContext  # noqa: E402
from trainables.training.classifier_loop import COMPILE_MODES  # noqa: E402

MODES = ("eager", "graphs") + COMPILE_MODES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(ap, image_size=16, train_size=1000, batch_size=None, student="cnn_small", teacher="cnn_small")
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--epochs", type=int, default=3, help="the last one is the steady epoch (>= 2)")
    ap.add_argument("--modes", default="eager,graphs,default,reduce-overhead",
                    help=f"comma-separated, from {', '.join(MODES)}")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {unknown} (accepted: {', '.join(MODES)})")
    if args.epochs < 2:
        ap.error("--epochs: at least 2 (the first holds the compilation)")
    device = pick_device(args.device)
    data = {"dataset": "synthetic", "dataset_kwargs": {"channels": 3, "image_size": args.image_size,
                                                        "num_classes": args.classes, "train_size": args.train_size}}
    figures, ratios = {}, {}
    with tempfile.TemporaryDirectory() as cache:
        ctx = TrialContext(artifacts=ArtifactCache(cache), checkpoint_every=0)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            teacher = {"model": args.teacher, "epochs": 1, "batch_size": 512, "lr": 0.05}
            for mode in modes:
                params = DistillParams(**data, teacher=teacher, student=args.student, epochs=args.epochs,
                                       batch_size=batch, lr=0.05, loss="kd",
                                       compile=False if mode in ("eager", "graphs") else mode,
                                       cuda_graphs=mode == "graphs")
                session = timed_session(device)
                final = run_distill(params, session, ctx)
                steady = session.times[-1] - session.times[-2]
                first = session.times[1] - session.times[0]
                key = f"b{batch}_{mode}"
                figures[f"{key}_images_per_s"] = args.train_size / steady
                figures[f"{key}_first_epoch_s"] = first
                figures[f"{key}_val_acc"] = final["val_acc"]
                print(f"  batch {batch} {mode}: {args.train_size / steady:,.0f} img/s steady, "
                      f"first epoch {first:.1f} s, val_acc {final['val_acc']:.3f}", flush=True)
            base = figures.get(f"b{batch}_eager_images_per_s")
            if base:
                for mode in (m for m in modes if m != "eager"):
                    ratios[f"b{batch}_{mode}_over_eager"] = figures[f"b{batch}_{mode}_images_per_s"] / base
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}x")
    print(f"compile_trial on {device}: {args.student}, {args.image_size} px, {args.train_size} images, "
          f"{args.epochs} epochs")
    record("compile_trial", device, vars(args), figures, ratios)


if __name__ == "__main__":
    main()
