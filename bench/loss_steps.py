"""Step time of every registered classifier loss relative to KD's, on the same student and batch,
measured in the same run (issue 18's goal: every loss within 1.1x of KD on a GPU).

A step is what the distill loop runs per batch with a cached teacher: the student's forward (with
its features for feature losses), the loss (its own projectors, memory banks and state updates
included), backward, and an SGD step over the student and the loss's parameters. The teacher's
logits and features are computed once, before timing, as a cached teacher's are.

    .venv/bin/python bench/loss_steps.py                                          # CPU size (minutes)
    .venv/bin/python bench/loss_steps.py --device cuda --batch 512 --steps 20 --rounds 7   # GPU size

Defaults: a resnet8x4 student and a resnet32x4 teacher (CIFAR-100 distillation's pair) on
CIFAR-100-shaped synthetic data (32 x 32, 100 classes); bf16 autocast and channels_last on CUDA.
On the CPU the times are this process's CPU time; on a GPU, wall time (see ``bench/common.py``).

Also prints each loss's operators per step (views left out), counted on one untimed run: the host
work that bounds a small step on a GPU, the same on every device. The optimiser step counts as its
parameter groups, one fused kernel each as on CUDA (bench/fused_ops.py counts the same way), so
the CPU's per-parameter update loop does not inflate the count. On a GPU two more columns say
where a loss's extra time goes: ``host ms`` (wall time to issue the steps, the GPU not waited for;
the median over the rounds) and ``kernel ms`` (the GPU's kernel time per step, summed from one
profiled run). A step whose host time is near its wall time is launch-bound; one whose kernel
time grew spends the extra time on the device: ``--kernels N`` then lists, per loss, the N kernels
that add the most device time per step over KD's.

``--compile MODE`` compiles the student's forward and the loss, each on its own, as a distill trial
with ``compile: MODE`` runs them (``reduce-overhead``: CUDA graphs on a GPU). Operators are not
counted then (compiled kernels dispatch none).

``--graphs`` takes each step whole (forward, loss, backward, update) as a CUDA graph, the way a
one-member fused trial with ``fused_forward: streams`` does (trainables/training/member_graphs.py):
no per-operator launch or dispatch cost is left, so on a GPU the ratios are the kernels' own (and
``ops / step`` counts what a replayed step still dispatches: the copies into the graph's inputs). On
a CPU there is nothing to capture: the steps run eagerly, and their count includes the CPU
optimiser's per-parameter update.

Appends a JSON line to bench/results/loss_steps.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace

import torch

from common import kernel_times, median_of, pick_device, record, synthetic_images  # noqa: E402  (sets sys.path)
from trainables.losses import LossInputs, create_loss, loss_names  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.runtime.engine import autocast, build_optimizer, predict  # noqa: E402
from trainables.runtime.op_count import OpCount, uncounted  # noqa: E402
from trainables.training.classifier_loop import COMPILE_MODES, compiled_forward  # noqa: E402
from trainables.training.member_graphs import WARMUP, MemberGraphs  # noqa: E402


def loss_step(name: str, student0, teacher, x, y, t_logits, t_feats, args, device):
    """``run()``: ``args.steps`` training steps of a fresh copy of the student with loss ``name``,
    cycling over the batches of the synthetic pool."""
    student = copy.deepcopy(student0)
    torch.manual_seed(0)
    # The training set the per-sample state (CRD's memory banks) is sized for: the pool's samples
    # first, then random labels up to --train-size (CIFAR's 50,000 by default).
    train_labels = torch.cat([y, torch.randint(0, args.classes, (max(args.train_size - len(y), 0),),
                                               generator=torch.Generator().manual_seed(0)).to(device)])
    loss_fn = create_loss(name, {}, num_classes=args.classes, student_dim=student.num_features,
                          teacher_dim=teacher.num_features, num_samples=len(train_labels), train_labels=train_labels,
                          teacher_head=teacher.head).to(device)
    opt = build_optimizer("sgd", list(student.parameters()) + list(loss_fn.parameters()), 0.05, 5e-4, 0.9, device)
    channels_last = device.type == "cuda"
    batches = [torch.arange(s, s + args.batch, device=device) for s in range(0, len(y) - args.batch + 1, args.batch)]
    xs = [x[idx].contiguous(memory_format=torch.channels_last) if channels_last else x[idx] for idx in batches]
    state = {"i": 0}
    step_optimizer = uncounted(opt.step)  # counted as its groups (ops_per_step)

    def batch() -> tuple[torch.Tensor, LossInputs]:
        """The next batch of the pool and its loss inputs (the student's outputs still to come)."""
        i = state["i"] % len(batches)
        state["i"] += 1
        idx = batches[i]
        return xs[i], LossInputs(student_logits=None, targets=y[idx], teacher_logits=t_logits[idx],
                                 teacher_features=t_feats[idx], indices=idx, epoch=1, num_epochs=4, progress=0.25)

    if args.graphs:
        opt.param_groups[0]["member"] = 0
        graphs = MemberGraphs([student], [loss_fn], opt, device, args.batch)

        def run() -> None:
            for _ in range(args.steps):
                graphs.step(1, *batch(), [0])

        run.optimizer_groups = 0  # the update is inside the step (and the graph)
        return run

    # --compile: the student and the loss each compiled, as a distill trial with ``compile`` runs
    # them (trainables/training/classifier_loop.py), the schedule's values passed as tensors
    forward, call_loss, columns = student, loss_fn, None
    cuda_graphs = False
    if args.compile:
        forward, cuda_graphs = compiled_forward(student, args.compile, device)
        call_loss, _ = compiled_forward(loss_fn, args.compile, device, mutated=loss_fn.buffers())
        columns = type(loss_fn).epoch_columns([loss_fn], 1, 4, device)

    def run() -> None:
        for _ in range(args.steps):
            xb, shared = batch()
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(device):
                if loss_fn.needs_features:
                    logits, feats = forward(xb, return_features=True)
                else:
                    logits, feats = forward(xb), None
                out = call_loss(replace(shared, student_logits=logits.float(), student_features=feats,
                                        member_columns=columns))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            step_optimizer()

    run.optimizer_groups = len(opt.param_groups)
    return run


def ops_per_step(run, steps: int) -> float:
    """Operators (kernels, roughly) per training step: a device-independent measure of the host
    work that bounds a small step on a GPU, where each one costs launch and dispatch time."""
    with OpCount() as counter:
        run()
    return counter.total / steps + run.optimizer_groups


def host_seconds(variants, device: torch.device, rounds: int) -> dict[str, float]:
    """Median wall seconds to *issue* each variant's run: the GPU drained before, not waited for
    at the end (drained after, outside the clock)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            torch.cuda.synchronize(device)
    return {name: statistics.median(t) for name, t in times.items()}


def extra_kernels(times: dict[str, float], kd: dict[str, float], steps: int, top: int) -> list[tuple[float, str]]:
    """The ``top`` kernels that add the most device time per step over KD's step (ms, name)."""
    extra = {name: (t - kd.get(name, 0.0)) / steps * 1e3 for name, t in times.items()}
    return sorted(((ms, name) for name, ms in extra.items() if ms > 0), reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--batch", "--batch-size", dest="batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2, help="distinct batches in the synthetic pool")
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed run")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs per loss, interleaved (the median counts)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--train-size", type=int, default=50_000,
                    help="training-set size per-sample loss state is sized for (CRD's memory banks)")
    ap.add_argument("--losses", default=None, help="comma-separated subset (kd is always measured)")
    ap.add_argument("--graphs", action="store_true", help="each step whole as a CUDA graph (eager on a CPU)")
    ap.add_argument("--compile", default=None, choices=COMPILE_MODES,
                    help="the student and the loss compiled in this mode, as a trial with compile runs them")
    ap.add_argument("--kernels", type=int, default=0, metavar="N",
                    help="on a GPU, also print each loss's N kernels that add most device time over KD's step")
    args = ap.parse_args()
    if args.graphs and args.compile:
        ap.error("--graphs and --compile are two ways to take the step's launches away: pick one")
    device = pick_device(args.device)
    names = loss_names("classifier") if args.losses is None else sorted(set(args.losses.split(",")) | {"kd"})

    shape = (3, args.image_size, args.image_size)
    x, y = synthetic_images(args.batch * args.batches, args.image_size, args.classes, device)
    torch.manual_seed(0)
    student0 = create_model(args.student, num_classes=args.classes, input_shape=shape).to(device)
    teacher = create_model(args.teacher, num_classes=args.classes, input_shape=shape).to(device).eval()
    if device.type == "cuda":
        student0 = student0.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    t_logits, t_feats = predict(teacher, x), predict(teacher, x, features=True)

    runs = {name: loss_step(name, student0, teacher, x, y, t_logits, t_feats, args, device) for name in names}
    for run in runs.values():
        # warm-up: allocator, cuDNN autotuning, CRD's first-batch normaliser, first-call costs; with
        # --graphs, the eager warm-up steps and the capture too
        for _ in range(1 + (WARMUP // args.steps + 1 if args.graphs else 0) + (2 if args.compile else 0)):
            run()
    # a dispatch mode around a compiled call would be traced into it (a recompile): not counted then
    ops = {} if args.compile else {name: ops_per_step(run, args.steps) for name, run in runs.items()}
    seconds = median_of(runs, device, args.rounds)
    per_step = {name: s / args.steps for name, s in seconds.items()}
    host, kernel, kernels = {}, {}, {}
    if device.type == "cuda":
        try:  # diagnostics: a failure here must not lose the timings above
            host = {name: s / args.steps for name, s in host_seconds(runs, device, args.rounds).items()}
            kernels = {name: kernel_times(run, device) for name, run in runs.items()}
            kernel = {name: sum(times.values()) / args.steps for name, times in kernels.items()}
        except Exception as exc:  # noqa: BLE001
            print(f"  (host / kernel time not measured: {type(exc).__name__}: {exc})")
    kd = per_step["kd"]
    how = (", each step a CUDA graph" if device.type == "cuda" else ", eager (no graphs on a CPU)") if args.graphs else ""
    how += f", student and loss compiled ({args.compile})" if args.compile else ""
    print(f"loss_steps on {device}: student {args.student}, teacher {args.teacher}, {shape}, "
          f"{args.classes} classes, batch {args.batch}{how}")
    extra = f"{'host ms':>10}{'kernel ms':>11}" if host and kernel else ""
    print(f"  {'loss':<14}{'ms / step':>10}{'vs kd':>8}{'ops / step':>12}{extra}")
    for name in names:
        cols = f"{host[name] * 1e3:>10.2f}{kernel[name] * 1e3:>11.2f}" if extra else ""
        count = f"{ops[name]:>12.0f}" if name in ops else f"{'-':>12}"
        print(f"  {name:<14}{per_step[name] * 1e3:>10.2f}{per_step[name] / kd:>8.2f}{count}{cols}")
    if kernel and args.kernels:
        for name in names:
            if name != "kd":
                print(f"  {name}: the kernels adding most device time over kd's step (ms per step)")
                for ms, kname in extra_kernels(kernels[name], kernels["kd"], args.steps, args.kernels):
                    print(f"    {ms:7.3f}  {kname[:110]}")
    record("loss_steps", device, vars(args), {**{f"{name}_ms_per_step": per_step[name] * 1e3 for name in names},
                                              **{f"{name}_ops_per_step": ops[name] for name in ops},
                                              **{f"{name}_host_ms_per_step": host[name] * 1e3 for name in host},
                                              **{f"{name}_kernel_ms_per_step": kernel[name] * 1e3 for name in kernel}},
           {f"{name}_over_kd": per_step[name] / kd for name in names if name != "kd"})


if __name__ == "__main__":
    main()
