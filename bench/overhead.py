"""Orchestration overhead per trial: N trivial trials (``bench_trivial``, which only reports)
through ``run_sweep`` (Ray Tune + MLflow tracking + reports), against a plain Python loop over the
same configurations, measured in the same run, for single-worker trials and for 2-worker DDP
trials (a Ray Train TorchTrainer per trial, gloo on CPU). Goals on CPU: <= 0.5 s per single-worker
trial, <= 10 s per DDP trial.

One sweep runs ``--single`` single-worker trials, then ``--ddp`` 2-worker trials, one at a time
(``max_concurrent_trials: 1``, the configurations listed in ``points_to_evaluate``). A trial's cost
is the time between its MLflow run's end and the previous trial's, so it covers scheduling, trial
start, reporting and tracking, and leaves out the sweep's fixed start-up and report cost (reported
apart); the first trial of each kind is not counted (it pays the kind's first-use costs, such as
Ray Train's first worker group).

    .venv/bin/python bench/overhead.py
    .venv/bin/python bench/overhead.py --single 12 --ddp 5

Wall-clock figures: on a shared machine other load inflates them. Appends a JSON line to
bench/results/overhead.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import ROOT, record  # noqa: E402  (sets sys.path)
from trainables.runtime.session import LocalSession  # noqa: E402

SPEC = """name: bench-overhead
trainable: bench_trivial
params: {{epochs: 1}}
search:
  x: {{uniform: [0.0, 1.0]}}
points_to_evaluate: {points}
num_samples: {n}
search_alg: {{type: random, seed: 0}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
checkpoint: {{every: 0, keep: 1}}
control: {{enabled: false}}
"""


def run_sweep_trials(single: int, ddp: int) -> tuple[float, list[tuple[int, float]]]:
    """Wall seconds of the whole sweep, and (workers, end time in s) of each trial in end order."""
    import mlflow

    points = [{"x": i / 100, "workers": 1} for i in range(single)] + [{"x": i / 100, "workers": 2}
                                                                      for i in range(ddp)]
    with tempfile.TemporaryDirectory() as cwd:
        spec = os.path.join(cwd, "space.yaml")
        with open(spec, "w") as f:
            f.write(SPEC.format(points=json.dumps(points), n=len(points)))
        env = {**os.environ, "W2S_PLUGINS": "bench.trivial_trainable", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_sweep.py"), spec], cwd=cwd, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"the overhead sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        client = mlflow.MlflowClient(f"sqlite:///{cwd}/mlflow.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`w2s.role` = 'trial'", max_results=1000)
        ends = sorted((r.info.end_time / 1000, int(r.data.params.get("workers", 1))) for r in runs)
        if len(ends) != len(points):
            sys.exit(f"expected {len(points)} trial runs in MLflow, found {len(ends)}")
        return seconds, [(w, t) for t, w in ends]


def per_trial_costs(ends: list[tuple[int, float]], workers: int) -> list[float]:
    """Seconds from the previous trial's end to this one's, for trials of ``workers`` after the
    first of their kind."""
    costs, seen = [], False
    for (_, prev), (w, t) in zip(ends, ends[1:]):
        if w == workers:
            if seen or ends[0][0] == workers:
                costs.append(t - prev)
            seen = True
    return costs


def loop_seconds(n: int) -> float:
    from bench.trivial_trainable import TrivialParams, run_trivial

    start = time.perf_counter()
    for i in range(n):
        run_trivial(TrivialParams(x=i / max(n, 1)), LocalSession(torch.device("cpu")), None)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--single", type=int, default=4, help="single-worker trials (first one not counted)")
    ap.add_argument("--ddp", type=int, default=2, help="2-worker DDP trials (first one not counted)")
    args = ap.parse_args()
    total, ends = run_sweep_trials(args.single, args.ddp)
    loop = loop_seconds(args.single) / args.single
    figures = {"sweep_total_s": total, "loop_s_per_trial": loop}
    ratios = {}
    for kind, workers in (("single", 1), ("ddp2", 2)):
        costs = per_trial_costs(ends, workers)
        per_trial = statistics.median(costs) if costs else float("nan")
        figures[f"{kind}_trial_costs_s"] = [round(c, 3) for c in costs]
        figures[f"{kind}_overhead_s_per_trial"] = per_trial - loop
        ratios[f"{kind}_sweep_over_loop_per_trial"] = per_trial / max(loop, 1e-9)
    figures["fixed_cost_s"] = total - (ends[-1][1] - ends[0][1])
    print(f"overhead: run_sweep (Tune + MLflow) vs a plain loop, {args.single} single + {args.ddp} DDP trivial trials")
    record("overhead", torch.device("cpu"), vars(args), figures, ratios)


if __name__ == "__main__":
    main()
