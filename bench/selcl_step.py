"""What Sel-CL's first stage costs against plain supervised training, measured in the same run:
images/s of (a) a bare CE step of the same network (forward, CE, backward, SGD), (b) the stage's
unsupervised warm-up step, (c) its selective step with the pair memory (five forward passes with
gradient and four of the momentum encoder per batch, as the authors'), and the selection pass after
an epoch (kNN on the embeddings of the whole training set, per image of it).

    .venv/bin/python bench/selcl_step.py                                 # CPU size (seconds)
    .venv/bin/python bench/selcl_step.py --model preact_resnet18 --image-size 32 --classes 10 \\
        --train-size 50000 --batch-size 128 --k 250 --queue-per-class 1000   # CIFAR-10's (GPU)

Appends a JSON line to bench/results/selcl_step.jsonl.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import add_size_args, median_of, record, sized_inputs  # noqa: E402  (sets sys.path)
from trainables.data import DatasetSplits  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.runtime.engine import autocast, seed_everything  # noqa: E402
from trainables.selcl.config import SelCLConfig  # noqa: E402
from trainables.selcl.stage import SelCLRun  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_args(ap, image_size=16, train_size=1024, batch_size=64, classes=10)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--k", type=int, default=20, help="kNN neighbours (the authors' 250)")
    ap.add_argument("--queue-per-class", type=int, default=20, help="pair memory per class (the authors' 1000)")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    device, shape, x, y = sized_inputs(args)
    data = DatasetSplits("synthetic", x, y, x[:16], y[:16], x[:16], y[:16], args.classes, (0.0,) * 3, (1.0,) * 3)
    cfg = SelCLConfig(epochs=10, batch_size=args.batch_size, milestones=[], warmup_epochs=1, k_val=args.k,
                      queue_per_class=args.queue_per_class, uns_queue=min(10000, args.train_size), sup_queue_begin=0)
    seed_everything(0)
    run = SelCLRun(create_model(args.model, num_classes=args.classes, input_shape=shape), data, cfg)
    bare = create_model(args.model, num_classes=args.classes, input_shape=shape).to(device)
    if device.type == "cuda":
        bare = bare.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = run.batches(1)[:args.steps]
    run.select()
    for idx in batches[:2]:  # the memory filled, kernels warm
        run.step(idx, epoch=1)
        run.step(idx, epoch=2)

    def ce_steps():
        for idx in batches:
            xb = x[idx].contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x[idx]
            with autocast(device):
                loss = F.cross_entropy(bare(xb).float(), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def steps(epoch):
        def go():
            for idx in batches:
                run.step(idx, epoch)
        return go

    times = median_of({"ce": ce_steps, "uns": steps(1), "selective": steps(2), "selection": run.select}, device,
                      args.rounds)
    images = args.steps * args.batch_size
    figures = {f"{k}_img_s": images / times[k] for k in ("ce", "uns", "selective")}
    figures["selection_img_s"] = args.train_size / times["selection"]
    ratios = {"uns/ce": figures["uns_img_s"] / figures["ce_img_s"],
              "selective/ce": figures["selective_img_s"] / figures["ce_img_s"]}
    record("selcl_step", device, vars(args), figures, ratios)


if __name__ == "__main__":
    main()
