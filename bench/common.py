"""Shared by the benchmarks: device choice, synchronised timing, and the JSON line each run appends
to ``bench/results/<name>.jsonl`` (device, torch version, figures, ratios)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS_DIR = os.path.join(ROOT, "bench", "results")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of ``fn()``, with the device drained before and after: wall time on a GPU; on the
    CPU, this process's CPU time, which other load on a shared machine inflates far less than
    wall time (the computation is the same either way)."""
    sync(device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    fn()
    sync(device)
    return clock() - start


def median_of(variants: dict[str, Callable[[], Any]], device: torch.device, rounds: int) -> dict[str, float]:
    """The median of ``rounds`` runs of each variant, interleaved (a, b, c, a, b, c, ...) so that
    slow phases of a shared machine hit every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def code_version() -> str:
    """The commit the figures come from (short hash, ``+changes`` when tracked files differ from
    it), or ``unknown`` outside a git checkout (the GPU machine gets a copy of the working tree)."""
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if changed else "")


# Environment variables recorded with a result when set: CUDA's number of hardware work queues
# (concurrent streams share them; bench/gpu_check.sh runs the streams forward with 8 and 32).
RECORDED_ENV = ("CUDA_DEVICE_MAX_CONNECTIONS",)


def record(name: str, device: torch.device, args: dict[str, Any], figures: dict[str, Any],
           ratios: dict[str, float]) -> dict[str, Any]:
    """Print the figures and ratios and append them as one JSON line to bench/results/<name>.jsonl."""
    line = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(device),
            "torch": torch.__version__, "code": code_version(), "host_cpus": os.cpu_count(), "args": args,
            "figures": figures,
            "ratios": ratios}
    env = {k: os.environ[k] for k in RECORDED_ENV if k in os.environ}
    if env:  # settings that change what a GPU runs, outside the arguments
        line["env"] = env
    for key, value in figures.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    for key, value in ratios.items():
        print(f"  ratio {key}: {value:.3f}")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"{name}.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def add_size_args(ap, *, image_size: int, train_size: int, batch_size: int | None, classes: int = 10,
                  student: str | None = None, teacher: str | None = None) -> None:
    """The flags every on-device benchmark takes: the synthetic data's size, the batch (None: the
    script has its own batch flag), the device; with ``student`` / ``teacher``, those models' flags."""
    if student is not None:
        ap.add_argument("--student", default=student)
    if teacher is not None:
        ap.add_argument("--teacher", default=teacher)
    ap.add_argument("--image-size", type=int, default=image_size)
    ap.add_argument("--classes", type=int, default=classes)
    ap.add_argument("--train-size", type=int, default=train_size)
    if batch_size is not None:
        ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")


def synthetic_images(n: int, image_size: int, classes: int, device: torch.device, seed: int = 0):
    """CIFAR-shaped (3 x S x S) normalised images and labels, already on the device."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x.to(device), y.to(device)


def sized_inputs(args):
    """(device, input shape, x, y) for the size flags of :func:`add_size_args`."""
    device = pick_device(args.device)
    x, y = synthetic_images(args.train_size, args.image_size, args.classes, device)
    return device, (3, args.image_size, args.image_size), x, y


def timed_session(device: torch.device):
    """A trainables ``LocalSession`` that records the wall time of every report (after the device
    drained): ``session.times[i + 1] - session.times[i]`` is epoch ``i``'s time, its report included."""
    from trainables.runtime.session import LocalSession

    class TimedSession(LocalSession):
        def __init__(self):
            super().__init__(device)
            self.times = [time.perf_counter()]

        def report(self, metrics, checkpoint=None):
            sync(self.device)
            self.times.append(time.perf_counter())
            super().report(metrics, checkpoint)

    return TimedSession()


def sgd_train_step(model_name: str, num_classes: int, shape, device: torch.device):
    """``step(x, targets)``: one SGD step of a fresh ``model_name`` on the device, as the training
    loop runs it there (bf16 autocast and channels_last on CUDA), cross-entropy against labels or
    soft targets. Seeded, so every benchmark variant starts from the same weights."""
    import torch.nn.functional as F

    from trainables.models import create_model
    from trainables.runtime.engine import autocast, build_optimizer

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, input_shape=shape).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer("sgd", model.parameters(), 0.05, 5e-4, 0.9, device)

    def step(xb: torch.Tensor, targets: torch.Tensor) -> None:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            loss = F.cross_entropy(model(xb).float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def kernel_times(run: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """GPU seconds of one ``run()`` per kernel name, from torch's profiler (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    return {event.key: event.self_device_time_total / 1e6 for event in prof.key_averages()
            if event.self_device_time_total > 0}
