"""How long ``run_sweep.py`` takes to give the prompt back after a sweep's last line (``browse: ...``),
against the exit it had before (``sys.exit(main())``: Ray's ``atexit`` shutdown, then the
interpreter's teardown, whose garbage collection walks every torch, Ray, MLflow and pyarrow object),
measured in the same run, alternating, on the same small sweep of trivial trials
(``bench_trivial``: what is timed is the exit, not training). Also says whether each way left its
local Ray's temp dir behind.

    .venv/bin/python bench/driver_exit.py
    .venv/bin/python bench/driver_exit.py --rounds 5

Wall-clock figures: on a shared machine other load inflates them. Appends a JSON line to
bench/results/driver_exit.jsonl.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import ROOT, record  # noqa: E402  (sets sys.path)

SPEC = """name: bench-exit
trainable: bench_trivial
params: {epochs: 1}
search:
  x: {grid: [0.0, 1.0]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
checkpoint: {every: 0, keep: 1}
control: {enabled: false}
"""

# The two ways a driver process ends; both run orchestrator.cli.main on the same arguments.
WAYS = {
    "before": "import sys; sys.path.insert(0, {root!r}); from orchestrator.cli import main; sys.exit(main())",
    "now": "import sys; sys.path.insert(0, {root!r}); from orchestrator.cli import leave, main; leave(main())",
}


def one_exit(way: str, workdir: str, index: int) -> tuple[float, float, bool]:
    """(seconds from the ``browse:`` line to the process's end, whole command, temp dir left)."""
    env = {**os.environ, "W2S_PLUGINS": "bench.trivial_trainable", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_TMPDIR", None)  # each driver makes its own, as a user's does
    argv = [sys.executable, "-c", WAYS[way].format(root=ROOT), os.path.join(workdir, "space.yaml"),
            "--name", f"{way}-{index}", "--storage-path", os.path.join(workdir, "runs"),
            "--mlflow-uri", f"sqlite:///{workdir}/mlflow.db"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last_line_at, out = None, []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("browse:"):
            last_line_at = time.perf_counter()
    rc = proc.wait()
    end = time.perf_counter()
    text = "".join(out)
    if rc != 0 or last_line_at is None:
        raise SystemExit(f"the {way} driver failed (exit {rc}):\n{text[-3000:]}")
    ray_tmp = re.search(r"local Ray: temp dir (\S+) ", text).group(1)
    kept = os.path.isdir(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)  # what the before way leaves: the bench must not fill /tmp
    return end - last_line_at, end - start, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="sweeps per way, alternating")
    args = ap.parse_args()
    tails = {way: [] for way in WAYS}
    walls = {way: [] for way in WAYS}
    left = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="w2s-bench-exit-") as workdir:
        with open(os.path.join(workdir, "space.yaml"), "w") as f:
            f.write(SPEC)
        for i in range(args.rounds):
            for way in WAYS:
                tail, wall, kept = one_exit(way, workdir, i)
                tails[way].append(tail)
                walls[way].append(wall)
                left[way].append(kept)
                print(f"  round {i + 1} {way}: {tail:.2f} s after the last line ({wall:.1f} s in all), "
                      f"temp dir {'left' if kept else 'removed'}", flush=True)
    figures = {f"{way}_exit_s": statistics.median(t) for way, t in tails.items()}
    figures.update({f"{way}_command_s": statistics.median(t) for way, t in walls.items()})
    figures.update({f"{way}_temp_dirs_left": sum(k) for way, k in left.items()})
    record("driver_exit", torch.device("cpu"), vars(args), figures,
           {"exit_now_over_before": figures["now_exit_s"] / figures["before_exit_s"]})


if __name__ == "__main__":
    main()
