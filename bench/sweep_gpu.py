"""A KD sweep on one device, three ways, in the same run: aggregate student images/s of

(a) ``sequential``: the configurations as separate trials, one after another (ClassifierRun steps);
(b) ``packed``: K concurrent processes sharing the device, each training its share of the
    configurations one after another (what fractional-GPU packing, ``gpus_per_worker: 1/K``, does);
(c) ``fused``: the configurations as the members of fused trials of K (``params.vectorize: K``,
    trainables/training/fused.py), in the forward mode ``--fused-forward`` picks (``streams``: each
    member's step a CUDA graph replayed on a stream of its own), eager or, with
    ``--fused-compile MODE``, with the members' forward and losses compiled in that ``compile`` mode
    (``reduce-overhead``: replayed as CUDA graphs on a GPU). The sequential and packed trials run
    as a trial does by default (``cuda_graphs: auto``: on a GPU each full step replayed as a CUDA
    graph after a few eager ones); ``--sequential-graphs false`` makes them eager, as every figure
    recorded before 2026-11-28 11:00 UTC had them.

Each configuration is a student (resnet8x4 at the GPU size) distilled (KD, cached teacher logits) with its own lr,
weight decay, momentum and temperature, on CIFAR-100-shaped synthetic data already on the device.
``--loss NAME`` distils with another classifier loss instead (its defaults, each configuration's
temperature; feature losses get cached synthetic teacher features of ``TEACHER_DIM``).
Images/s counts member images: configurations x steps x batch over the wall time of the trained
steps (each trial's first ``--warmup`` steps, where kernels are picked and memory is allocated, are
not timed).

    .venv/bin/python bench/sweep_gpu.py                                # the CPU size (a minute)
    .venv/bin/python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64,512 --steps 30 \\
        --warmup 5 --student resnet8x4 --image-size 32 --procs 4        # the issue's GPU size
    .venv/bin/python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 --steps 30 --warmup 5 \
        --student resnet8x4 --image-size 32 --ways sequential,fused --fused-compile reduce-overhead
    .venv/bin/python bench/sweep_gpu.py --dry-run                      # recommends a packing or fusion width

``--dry-run`` trains nothing: it measures one member's training memory (one step, the device's peak
allocation on a GPU; parameters, gradients, optimiser state and the forward's outputs on the CPU)
and prints how many members fit the device at once, and which way to run the sweep.

On a GPU every figure is wall time. On the CPU, sequential and fused count this process's CPU time
(robust to other load on a shared machine); packed, being several processes at once, counts wall
time from their common start, so other load inflates it. Appends a JSON line to
bench/results/sweep_gpu.jsonl.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.multiprocessing as mp

from common import device_name, pick_device, record, sync, synthetic_images  # noqa: E402  (sets sys.path)
from trainables.data import DatasetSplits  # noqa: E402
from trainables.losses import create_loss, loss_class, loss_names  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402
from trainables.training.classifier_loop import COMPILE_MODES, CachedTeacher, ClassifierRun, OptimConfig  # noqa: E402
from trainables.training.fused import (FORWARD_MODES, FusedRun, Member,  # noqa: E402
                                       member_bytes as fused_member_bytes)
from trainables.training.views import PlainViews  # noqa: E402


def configurations(n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` KD configurations as a random search would sample them (fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 4, generator=gen).tolist()
    return [{"lr": 10 ** (-3 + 2 * a), "weight_decay": 10 ** (-5 + 2 * b), "momentum": 0.8 + 0.19 * c,
             "temperature": [1.0, 2.0, 4.0, 8.0][int(d * 4)]} for a, b, c, d in u]


TEACHER_DIM = 256  # resnet32x4's pooled features, what the CIFAR pair's feature losses see


def data_for(args, device) -> tuple[DatasetSplits, CachedTeacher]:
    n = args.batch * (args.warmup + args.steps)
    x, y = synthetic_images(n, args.image_size, args.classes, device)
    few = slice(0, 8)  # evaluation is not measured
    shape = (3, args.image_size, args.image_size)
    data = DatasetSplits("synthetic", x, y, x[few], y[few], x[few], y[few], args.classes, (0.0,) * 3, (1.0,) * 3)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(n, args.classes, generator=gen).to(device)
    features = torch.randn(n, TEACHER_DIM, generator=gen).to(device) if sweep_loss(args).needs_features else None
    assert data.input_shape == shape
    return data, CachedTeacher(logits, features)


def sweep_loss(args):
    return loss_class(getattr(args, "loss", "kd"))


def member(args, config: dict[str, float], data: DatasetSplits, seed: int, compile: bool | str = False,
           graphs: bool | str = "auto") -> Member:
    torch.manual_seed(seed)
    model = create_model(args.student, num_classes=args.classes, input_shape=data.input_shape)
    torch.manual_seed(10_000 + seed)  # the loss's own parameters (projectors), after the student's
    head = torch.nn.Linear(TEACHER_DIM, args.classes).to(data.train_x.device)  # SRRL's frozen teacher classifier
    loss = create_loss(getattr(args, "loss", "kd"), {"temperature": config["temperature"]}, num_classes=args.classes,
                       student_dim=model.num_features, teacher_dim=TEACHER_DIM, num_samples=len(data.train_y),
                       train_labels=data.train_y, teacher_head=head).to(data.train_x.device)
    optim = OptimConfig(epochs=1, batch_size=args.batch, lr=config["lr"], weight_decay=config["weight_decay"],
                        momentum=config["momentum"], compile=compile, cuda_graphs=graphs)
    return Member(model, loss, optim)


def batches(args, device) -> list[torch.Tensor]:
    return [torch.arange(i * args.batch, (i + 1) * args.batch, device=device) for i in range(args.warmup + args.steps)]


def clock(device):
    """Wall time on a GPU; on the CPU this process's CPU time, which other load on a shared machine
    inflates far less (the packed way, several processes, is timed by the wall clock everywhere)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def timed_steps(step, idx: list[torch.Tensor], warmup: int, device) -> float:
    """Seconds of the steps after the first ``warmup``."""
    for i in idx[:warmup]:
        step(i)
    sync(device)
    now = clock(device)
    start = now()
    for i in idx[warmup:]:
        step(i)
    sync(device)
    return now() - start


def one_trial(args, config, data, teacher, device, seed) -> float:
    m = member(args, config, data, seed, graphs=False if args.sequential_graphs == "false" else "auto")
    run = ClassifierRun(m.model, data, m.loss_fn, m.optim, LocalSession(device), seed, teacher, PlainViews(), {})
    run.model.train()
    return timed_steps(lambda i: run.step(0, [i]), batches(args, device), args.warmup, device)


def sequential(args, configs, device) -> float:
    data, teacher = data_for(args, device)
    return sum(one_trial(args, c, data, teacher, device, s) for s, c in enumerate(configs))


def _packed_worker(rank: int, args, configs, device_str: str, out: dict) -> None:
    torch.set_num_threads(max(1, args.threads // args.procs))
    device = torch.device(device_str)
    data, teacher = data_for(args, device)
    mine = configs[rank::args.procs]
    args.barrier.wait()  # every process starts training together, after its imports and data
    start = time.perf_counter()
    for s, c in enumerate(mine):
        one_trial(args, c, data, teacher, device, s)
    out[rank] = (start, time.perf_counter())


def packed(args, configs, device) -> float:
    """Wall seconds from the common start to the last process's end (warm-up steps included:
    processes overlap, so they cannot be cut out; on a GPU they are a small share)."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        args.barrier = manager.Barrier(args.procs)
        procs = [ctx.Process(target=_packed_worker, args=(r, args, configs, str(device), out)) for r in range(args.procs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        spans = list(out.values())
        del args.barrier
    if len(spans) != args.procs:
        raise RuntimeError("a packed process failed")
    return max(e for _, e in spans) - min(s for s, _ in spans)


def fused(args, configs, device) -> float:
    data, teacher = data_for(args, device)
    total = 0.0
    for start in range(0, len(configs), args.fuse):
        group = configs[start:start + args.fuse]
        members = [member(args, c, data, start + s, args.fused_compile) for s, c in enumerate(group)]
        layout = {"auto": None, "on": True, "off": False}[args.fused_channels_last]
        run = FusedRun(members, data, LocalSession(device), 0, teacher, None, {}, mode=args.fused_forward,
                       channels_last=layout)
        run.students.train()
        idx = batches(args, device)
        # With --fused-compile the warm-up steps also compile (and record the CUDA graphs): untimed.
        total += timed_steps(lambda i: run.step(0, i, run.prepare(i)), idx, args.warmup, device)
    return total


def member_bytes(args, device) -> int:
    """One member's training memory at ``args.batch``: measured on a GPU (peak allocation of one
    step), estimated on the CPU as the parse-time check does (trainables/training/fused.py)."""
    data, teacher = data_for(args, device)
    m = member(args, configurations(1)[0], data, 0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run = ClassifierRun(m.model, data, m.loss_fn, m.optim, LocalSession(device), 0, teacher, PlainViews(), {})
        run.step(0, [torch.arange(args.batch, device=device)])
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    return fused_member_bytes(m.model, data.input_shape, args.batch)


def recommend(args, device) -> None:
    per = member_bytes(args, device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
    else:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        free, total = pages, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    fits = max(0, int(0.8 * free // max(per, 1)))
    print(f"one member at batch {args.batch}: {per / 2**20:.1f} MiB; {free / 2**30:.1f} GiB free on {device_name(device)}: "
          f"{fits} members fit at once")
    width = min(fits, args.configs)
    if device.type == "cuda":
        print(f"recommendation: params.vectorize: {max(width, 1)} (fused_forward auto runs streams there: on an "
              "H200, resnet8x4, K = 16, 10.2x sequential eager trials at batch 64 and 1.87x at 512, not yet measured "
              "against sequential trials replaying their steps as CUDA graphs, their default now; with DDP workers or "
              "compile, vmap: 3.24x eager and 6.48x with compile: reduce-overhead at batch 64); packing processes "
              "on one GPU measured 0.37x on an H100, so is never recommended")
    else:
        print(f"recommendation: params.vectorize: {max(width, 1)} with fused_forward: loop (on a CPU grouped "
              "convolutions are slower than K plain ones; the shared batch work still saves), one trial per core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    ap.add_argument("--configs", type=int, default=4, help="configurations in the sweep")
    ap.add_argument("--fuse", type=int, default=0, help="members per fused trial (default: all configurations)")
    ap.add_argument("--procs", type=int, default=2, help="concurrent processes for the packed way")
    ap.add_argument("--batch-sizes", default="32", help="batch per configuration, comma-separated")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per trial")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per trial first")
    ap.add_argument("--student", default="cnn_small")
    ap.add_argument("--loss", default="kd", choices=loss_names("classifier"), help="the sweep's classifier loss")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--fused-forward", default="auto", choices=FORWARD_MODES)
    ap.add_argument("--fused-channels-last", default="auto", choices=("auto", "on", "off"),
                    help="the fused way's memory layout (auto: channels_last on CUDA, as the trainable does)")
    ap.add_argument("--fused-compile", default="false", choices=("false", "true", *COMPILE_MODES),
                    help="the fused way's compile mode, as params.compile takes it (false: eager)")
    ap.add_argument("--sequential-graphs", default="auto", choices=("auto", "false"),
                    help="the sequential and packed trials' cuda_graphs (auto: CUDA graphs on a GPU, as trials run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every way; the median counts")
    ap.add_argument("--ways", default="sequential,packed,fused", help="which ways to run, comma-separated")
    ap.add_argument("--dry-run", action="store_true", help="measure one member's memory and recommend; train nothing")
    args = ap.parse_args()
    device = pick_device(args.device)
    args.threads = torch.get_num_threads()
    args.fuse = args.fuse or args.configs
    args.fused_compile = {"false": False, "true": True}.get(args.fused_compile, args.fused_compile)
    configs = configurations(args.configs)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.dry_run:
        for b in sizes:
            args.batch = b
            recommend(args, device)
        return
    ways = {"sequential": sequential, "packed": packed, "fused": fused}
    chosen = [w for w in args.ways.split(",") if w]
    figures, ratios = {}, {}
    for b in sizes:
        args.batch = b
        images = args.configs * args.steps * b
        times: dict[str, list[float]] = {way: [] for way in chosen}
        for _ in range(args.rounds):  # interleaved, so slow phases of a shared machine hit every way alike
            for way in chosen:
                times[way].append(ways[way](args, configs, device))
        for way in chosen:
            seconds = statistics.median(times[way])
            figures[f"b{b}_{way}_images_per_s"] = images / seconds
            print(f"batch {b} {way}: {images / seconds:,.0f} member images/s (median {seconds:.2f} s of "
                  f"{args.rounds})", flush=True)
        for way in chosen:
            if way != "sequential" and "sequential" in chosen:
                ratios[f"b{b}_{way}_over_sequential"] = (figures[f"b{b}_{way}_images_per_s"]
                                                         / figures[f"b{b}_sequential_images_per_s"])
    record("sweep_gpu", device, {k: v for k, v in vars(args).items() if k not in ("barrier",)}, figures, ratios)


if __name__ == "__main__":
    main()
