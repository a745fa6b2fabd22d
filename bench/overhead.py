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

For the DDP trials it also prints where the time goes (README.md, "DDP trial overhead"): the
phases between timestamps that the trial process, the Train controller (through the callback in
bench/train_phases.py) and every rank write (trainables/runtime/phases.py), and the CPU seconds of
each process Ray started for a trial, which other load on a shared machine inflates far less than
the wall time. ``--compare`` first runs the same sweep with the DDP settings before issue 18.

    .venv/bin/python bench/overhead.py
    .venv/bin/python bench/overhead.py --single 12 --ddp 5
    .venv/bin/python bench/overhead.py --single 1 --ddp 4 --compare

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
from orchestrator.store.tracking import TAG_TRIAL  # noqa: E402
from trainables.runtime.phases import PHASES_ENV  # noqa: E402
from trainables.runtime.lean_train import STOCK_TRAIN_ENV  # noqa: E402
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


def run_sweep_trials(single: int, ddp: int, env_overrides: dict[str, str] | None = None):
    """Wall seconds of the whole sweep; (workers, end time in s) of each trial in end order; the
    phase marks of each DDP trial's Train run (:mod:`trainables.runtime.phases`, the controller's
    from :mod:`bench.train_phases`) by run name; each trial's MLflow end time by run name; and the
    CPU time of the sweep's processes (:func:`watch_cpu`)."""
    import mlflow

    points = [{"x": i / 100, "workers": 1} for i in range(single)] + [{"x": i / 100, "workers": 2}
                                                                      for i in range(ddp)]
    with tempfile.TemporaryDirectory() as cwd:
        spec = os.path.join(cwd, "space.yaml")
        with open(spec, "w") as f:
            f.write(SPEC.format(points=json.dumps(points), n=len(points)))
        env = {**os.environ, "W2S_PLUGINS": "bench.trivial_trainable", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PHASES_ENV: cwd, "RAY_TRAIN_CALLBACKS": "bench.train_phases.PhaseCallback",
               **(env_overrides or {})}
        start = time.perf_counter()
        with open(os.path.join(cwd, "sweep.log"), "w+") as log:
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_sweep.py"), spec], cwd=cwd, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
            processes = watch_cpu(proc)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                log.seek(0)
                sys.exit(f"the overhead sweep failed:\n{log.read()[-6000:]}")
        client = mlflow.MlflowClient(f"sqlite:///{cwd}/mlflow.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`w2s.role` = 'trial'", max_results=1000)
        ends = sorted((r.info.end_time / 1000, int(r.data.params.get("workers", 1))) for r in runs)
        if len(ends) != len(points):
            sys.exit(f"expected {len(points)} trial runs in MLflow, found {len(ends)}")
        run_ends = {f"train-{r.data.tags.get(TAG_TRIAL)}": r.info.end_time / 1000 for r in runs}
        marks: dict[str, list[dict]] = {}
        phase_file = os.path.join(cwd, "phases.jsonl")
        if os.path.exists(phase_file):
            with open(phase_file) as f:
                for line in f:
                    mark = json.loads(line)
                    marks.setdefault(mark["run"], []).append(mark)
        return seconds, [(w, t) for t, w in ends], marks, run_ends, processes


# A DDP trial's phases, each from one mark to the next (a mark several processes write, the
# workers', counts at its latest: the slowest rank holds the others up). "prev_end" is the previous
# trial's MLflow end, "end" this one's, so the rows add up to the trial's cost.
PHASES = [
    ("tune: previous trial end -> trial function starts", "prev_end", "trial_start"),
    ("trial process: import ray.train, build TorchTrainer", "trial_start", "trainer_built"),
    ("Train controller actor start (spawn, imports)", "trainer_built", "controller_started"),
    ("controller: first step -> worker group start", "controller_started", "worker_group_start"),
    ("placement group + worker actors (spawn, imports)", "worker_group_start", "worker_actors_ready"),
    ("backend setup (gloo process group) + train fn launch", "worker_actors_ready", "train_fn_launched"),
    ("workers: train fn starts (unpickle the loop)", "train_fn_launched", "worker_fn_start"),
    ("workers: imports + TrainSession", "worker_fn_start", "worker_session_ready"),
    ("workers: the training loop + reports", "worker_session_ready", "worker_loop_done"),
    ("controller notices the end (poll interval)", "worker_loop_done", "shutdown_start"),
    ("teardown: worker group shutdown", "shutdown_start", "shutdown_done"),
    ("controller exit -> fit() returns", "shutdown_done", "fit_end"),
    ("tune result + MLflow -> trial end", "fit_end", "end"),
]


def phase_breakdown(ends: list[tuple[int, float]], marks: dict[str, list[dict]], run_ends: dict[str, float]
                    ) -> dict[str, float]:
    """Median seconds of each of :data:`PHASES` over the DDP trials after the first."""
    order = sorted(run_ends.items(), key=lambda kv: kv[1])
    per_phase: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    per_phase["(worker process created, relative to worker group start)"] = []
    seen_ddp = False
    for (_, prev_end), (run, end) in zip(order, order[1:]):
        if run not in marks:
            continue  # a single-worker trial: no Train run
        if not seen_ddp:
            seen_ddp = True  # the first DDP trial pays first-use costs; not counted
            continue
        at = {"prev_end": prev_end, "end": end}
        for m in marks[run]:
            at[m["phase"]] = max(at.get(m["phase"], m["t"]), m["t"])
        for label, a, b in PHASES:
            if a in at and b in at:
                per_phase[label].append(at[b] - at[a])
        spawned = [m["t"] for m in marks[run] if m["phase"] == "worker_process_created"]
        if spawned and "worker_group_start" in at:
            per_phase["(worker process created, relative to worker group start)"].append(
                min(spawned) - at["worker_group_start"])
    return {label: statistics.median(v) for label, v in per_phase.items() if v}


def print_breakdown(title: str, breakdown: dict[str, float], cpu: dict[str, float]) -> None:
    print(f"where a 2-worker DDP trial's time goes ({title}; median s over the trials after the first):")
    total = sum(v for label, v in breakdown.items() if not label.startswith("("))
    for label, seconds in breakdown.items():
        share = "" if label.startswith("(") else f"{100 * seconds / max(total, 1e-9):5.1f}%"
        print(f"  {label:<58} {seconds:8.3f}  {share}")
    print(f"  {'sum':<58} {total:8.3f}")
    print("  CPU seconds of the processes Ray started for the trial (median per trial; the wall-clock rows above")
    print("  stretch with other load on a shared machine, these much less):")
    for name, seconds in cpu.items():
        print(f"    {name:<56} {seconds:8.2f}")


def watch_cpu(proc: subprocess.Popen, every_s: float = 0.2) -> dict[int, tuple[float, float, str]]:
    """Until ``proc`` exits, sample the CPU seconds (user + system) of every process below it (its
    Ray: GCS, raylet and every worker and actor process): pid -> (created at, CPU seconds, name).
    CPU time, unlike wall time, barely depends on what else the shared machine runs; a process
    that exits between two samples loses at most ``every_s`` of its CPU time from the count."""
    import psutil

    seen: dict[int, tuple[float, float, str]] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                with child.oneshot():
                    cpu = child.cpu_times()
                    name = (child.cmdline() or [child.name()])[0]
                    seen[child.pid] = (child.create_time(), cpu.user + cpu.system,
                                       name if name.startswith("ray::") else seen.get(child.pid, (0, 0, name))[2])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        time.sleep(every_s)
    proc.wait()
    return seen


def ddp_trial_cpu(marks: dict[str, list[dict]], run_ends: dict[str, float],
                  processes: dict[int, tuple[float, float, str]]) -> dict[str, float]:
    """Median CPU seconds, per DDP trial after the first, of the processes Ray started during the
    trial (the Train controller, its helper actors and the ranks), by process name, and their sum."""
    order = sorted(run_ends.items(), key=lambda kv: kv[1])
    per_trial: list[dict[str, float]] = []
    seen_ddp = False
    for (_, prev_end), (run, end) in zip(order, order[1:]):
        if run not in marks:
            continue
        if not seen_ddp:
            seen_ddp = True
            continue
        by_name: dict[str, float] = {}
        for created, cpu, name in processes.values():
            if prev_end < created <= end:
                key = name.split(".")[0].removeprefix("ray::")
                by_name[key] = by_name.get(key, 0.0) + cpu
        # A process sampled while Ray was still setting its title shows a cut name ("Synchroniz")
        for short in sorted(by_name, key=len):
            longer = [n for n in by_name if n != short and n.startswith(short)]
            if longer:
                by_name[longer[0]] += by_name.pop(short)
        by_name["sum"] = sum(by_name.values())
        per_trial.append(by_name)
    names = sorted({k for t in per_trial for k in t}, key=lambda k: (k == "sum", k))
    return {k: statistics.median(t.get(k, 0.0) for t in per_trial) for k in names}


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


# The DDP settings before issue 18 (README.md, "DDP trial overhead"): Ray Train's stock callbacks
# and a 0.5 s health-check interval. What ``--compare`` runs as the baseline.
STOCK_ENV = {STOCK_TRAIN_ENV: "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def ddp_figures(ends: list[tuple[int, float]], loop: float) -> tuple[list[float], float]:
    costs = per_trial_costs(ends, 2)
    return [round(c, 3) for c in costs], (statistics.median(costs) if costs else float("nan")) - loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--single", type=int, default=4, help="single-worker trials (first one not counted)")
    ap.add_argument("--ddp", type=int, default=2, help="2-worker DDP trials (first one not counted)")
    ap.add_argument("--compare", action="store_true",
                    help="first run the same sweep with the DDP settings before issue 18 (the baseline)")
    args = ap.parse_args()
    loop = loop_seconds(args.single) / args.single
    figures: dict = {}
    ratios = {}
    if args.compare:
        _, stock_ends, stock_marks, stock_run_ends, stock_procs = run_sweep_trials(args.single, args.ddp, STOCK_ENV)
        stock_breakdown = phase_breakdown(stock_ends, stock_marks, stock_run_ends)
        stock_cpu = ddp_trial_cpu(stock_marks, stock_run_ends, stock_procs)
        print_breakdown("baseline: the settings before issue 18", stock_breakdown, stock_cpu)
        figures["stock_ddp2_cpu_s_per_trial"] = {k: round(v, 2) for k, v in stock_cpu.items()}
        figures["stock_ddp2_trial_costs_s"], figures["stock_ddp2_overhead_s_per_trial"] = ddp_figures(stock_ends, loop)
        figures["stock_ddp2_phase_s"] = {label: round(v, 3) for label, v in stock_breakdown.items()}
    total, ends, marks, run_ends, procs = run_sweep_trials(args.single, args.ddp)
    breakdown = phase_breakdown(ends, marks, run_ends)
    cpu = ddp_trial_cpu(marks, run_ends, procs)
    print_breakdown("the sweep's settings", breakdown, cpu)
    figures["ddp2_cpu_s_per_trial"] = {k: round(v, 2) for k, v in cpu.items()}
    figures.update({"sweep_total_s": total, "loop_s_per_trial": loop})
    for kind, workers in (("single", 1), ("ddp2", 2)):
        costs = per_trial_costs(ends, workers)
        per_trial = statistics.median(costs) if costs else float("nan")
        figures[f"{kind}_trial_costs_s"] = [round(c, 3) for c in costs]
        figures[f"{kind}_overhead_s_per_trial"] = per_trial - loop
        ratios[f"{kind}_sweep_over_loop_per_trial"] = per_trial / max(loop, 1e-9)
    figures["fixed_cost_s"] = total - (ends[-1][1] - ends[0][1])
    figures["ddp2_phase_s"] = {label: round(v, 3) for label, v in breakdown.items()}
    if args.compare:
        ratios["ddp2_overhead_over_stock"] = figures["ddp2_overhead_s_per_trial"] / figures["stock_ddp2_overhead_s_per_trial"]
        if cpu and stock_cpu:
            ratios["ddp2_cpu_over_stock"] = cpu["sum"] / stock_cpu["sum"]
    print(f"overhead: run_sweep (Tune + MLflow) vs a plain loop, {args.single} single + {args.ddp} DDP trivial trials"
          + (", after the same sweep with the settings before issue 18" if args.compare else ""))
    record("overhead", torch.device("cpu"), vars(args), figures, ratios)


if __name__ == "__main__":
    main()
