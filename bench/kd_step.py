"""Student images/s of one KD training step, three ways, measured in the same run:

(a) a bare student train step on synthetic on-device data (the ceiling: forward, CE, backward,
    optimiser step, nothing else), (b) the distill loop (``train_classifier``) with a cached
    teacher (logits looked up by index), (c) the same loop with an online teacher (a teacher forward
    every step), all three eager; and on a GPU (d) (b) as a trial runs it by default there, each
    step replayed as a CUDA graph (``cuda_graphs: auto``). Goal on GPU: b/a >= 0.95.

    .venv/bin/python bench/kd_step.py                                  # CPU size (seconds)
    .venv/bin/python bench/kd_step.py --student resnet18 --teacher resnet56 --image-size 32 \\
        --classes 100 --train-size 50000 --batch-size 512              # GPU size (bf16 autocast)

On the CPU the figures are per second of this process's CPU time (robust to other load on a
shared machine); on a GPU, per wall second. Two figures per variant: the whole call (set-up and
every epoch: what a short trial pays), and ``steady`` (wall time of the epochs after a first one:
what each step costs once a trial runs, in wall time on the CPU too; the issue's "KD >= 0.95 of a bare
step" is this ratio).

Appends a JSON line to bench/results/kd_step.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from common import add_size_args, median_of, record, sized_inputs, sync, timed_session  # noqa: E402  (sets sys.path)
from trainables.training.classifier_loop import CachedTeacher, OnlineTeacher, OptimConfig, train_classifier  # noqa: E402
from trainables.data import DatasetSplits  # noqa: E402
from trainables.runtime.engine import autocast, build_optimizer, epoch_batches, predict  # noqa: E402
from trainables.losses import create_loss  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402


def splits(x, y, classes) -> DatasetSplits:
    few = slice(0, 16)  # evaluation is not what is measured
    return DatasetSplits("synthetic", x, y, x[few], y[few], x[few], y[few], classes, (0.0,) * 3, (1.0,) * 3)


def bare_steps(model, x, y, args, device, epochs, marks: list[float] | None = None):
    """``marks``, when given, gets the wall time after each epoch (the device drained)."""
    session = LocalSession(device)
    opt = build_optimizer("sgd", model.parameters(), 0.05, 5e-4, 0.9, device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    for epoch in range(epochs):
        for idx in epoch_batches(len(y), args.batch_size, epoch, 0, session, device):
            xb = x[idx].contiguous(memory_format=torch.channels_last) if channels_last else x[idx]
            with autocast(device):
                loss = F.cross_entropy(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if marks is not None:
            sync(device)
            marks.append(time.perf_counter())


def loop(model, data, teacher, args, device, epochs, marks: list[float] | None = None, graphs: bool = False):
    """``marks``, when given, gets the wall time after each epoch's report (the device drained);
    ``graphs``: each step a CUDA graph (``cuda_graphs``), else eager."""
    loss = create_loss("kd", {"temperature": 4.0}, num_classes=data.num_classes)
    session = timed_session(device) if marks is not None else LocalSession(device)
    train_classifier(model=model, data=data, loss_fn=loss, session=session, seed=0, teacher=teacher,
                     optim=OptimConfig(epochs=epochs, batch_size=args.batch_size, lr=0.05, cuda_graphs=graphs))
    if marks is not None:
        marks.extend(session.times[1:])


def steady_seconds(run, student0, args, device) -> dict[str, float]:
    """Median seconds of ``args.epochs`` epochs after a first one, per variant, interleaved: what a
    step costs once a trial runs (the trial's set-up and its first epoch's allocations left out;
    the loop's per-epoch evaluation and metrics kept in)."""
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, fn in run.items():
            marks: list[float] = []
            fn(copy.deepcopy(student0), args.epochs + 1, marks)
            times[name].append(marks[-1] - marks[0])
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="cnn_small")
    ap.add_argument("--teacher", default="cnn")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per variant (the median counts)")
    add_size_args(ap, image_size=16, train_size=256, batch_size=128)
    args = ap.parse_args()
    device, shape, x, y = sized_inputs(args)
    data = splits(x, y, args.classes)
    torch.manual_seed(0)
    student0 = create_model(args.student, num_classes=args.classes, input_shape=shape).to(device)
    teacher = create_model(args.teacher, num_classes=args.classes, input_shape=shape).to(device).eval()
    cached = CachedTeacher(predict(teacher, x))
    online = OnlineTeacher(teacher)

    variants = {
        "bare_step": lambda m, e, marks=None: bare_steps(m, x, y, args, device, e, marks),
        "kd_cached": lambda m, e, marks=None: loop(m, data, cached, args, device, e, marks),
        "kd_online": lambda m, e, marks=None: loop(m, data, online, args, device, e, marks),
    }
    if device.type == "cuda":
        variants["kd_cached_graphs"] = lambda m, e, marks=None: loop(m, data, cached, args, device, e, marks, True)
    images = args.train_size * args.epochs
    for run in variants.values():
        run(copy.deepcopy(student0), 1)  # warm-up: allocator, cuDNN autotuning, first-call costs
    seconds = median_of({name: (lambda run=run: run(copy.deepcopy(student0), args.epochs))
                       for name, run in variants.items()}, device, args.rounds)
    figures = {f"{name}_images_per_s": images / s for name, s in seconds.items()}
    steady = steady_seconds(variants, student0, args, device)
    figures.update({f"{name}_steady_images_per_s": images / s for name, s in steady.items()})
    print(f"kd_step on {device}: student {args.student}, teacher {args.teacher}, {shape}, batch {args.batch_size}")
    a = figures["bare_step_images_per_s"]
    ratios = {f"{name[3:]}_over_bare": figures[f"{name}_images_per_s"] / a for name in variants if name != "bare_step"}
    ratios.update({f"steady_{name[3:]}_over_bare": steady["bare_step"] / steady[name]
                   for name in variants if name != "bare_step"})
    record("kd_step", device, vars(args), figures, ratios)


if __name__ == "__main__":
    main()
