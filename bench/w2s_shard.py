"""The w2s_probe feature pass in one process against the same pass sharded over N Ray Train
workers (``resources.workers: N``), on the CPU: wall time of the strong model's embedding pass over
a synthetic dataset, with a fresh feature store each round (so every round computes the table).

    .venv/bin/python bench/w2s_shard.py                          # resnet20, 8000 3x32x32 images, 2 workers
    .venv/bin/python bench/w2s_shard.py --images 2000 --rounds 1

Wall time, not CPU time: the shards run in other processes. The sharded figure includes what a
real sweep pays for sharding (starting the Train worker group, each worker loading the data and
building the model, assembling the shards); the Ray start-up itself is left out (a sweep has
Ray running already). The one-process pass is timed with 1 torch thread and with as many threads
as the shards have workers, so both sides may use the same cores. Appends a JSON line to
bench/results/w2s_shard.jsonl.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, record  # noqa: E402
from orchestrator.store.feature_store import FeatureStore  # noqa: E402
from trainables.runtime.trainable import TrialContext  # noqa: E402
from trainables.w2s_probe.prepare import prepare_w2s  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=args.workers, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}})
    # Only the strong role is made (the weak one counts as searched, so its model, which the params
    # still need, is never trained): the timing is the pass alone. The strong model is untrained:
    # the same arithmetic as a trained one.
    params = {"dataset": "synthetic", "feature_batch_size": args.batch_size,
              "dataset_kwargs": {"channels": 3, "image_size": 32, "train_size": args.images - 400},
              "pretrain_split": {"weak": 0.05, "strong": 0.0},
              "weak": {"model": "linear", "train": {"epochs": 1}}, "strong": {"model": args.model}}

    shard_seconds: list[float] = []  # the slowest shard's own time (data, model, pass, staging)

    def one_pass(workers: int, threads: int) -> float:
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as root:
            ctx = TrialContext(artifacts=FeatureStore(root), worker_resources={"CPU": 1.0})
            t0 = time.perf_counter()
            info = prepare_w2s({**params, "workers": workers}, {"weak"}, ctx)
            seconds = time.perf_counter() - t0
            if workers > 1:
                meta = FeatureStore(root).lookup("w2s_features", info["strong_key"]).meta
                shard_seconds.append(max(s["seconds"] for s in meta["shards"]))
        assert info["feature_passes"] == 1 and not info["strong_cache_hit"], info
        return seconds

    variants = {"one_process_1_thread": (1, 1), f"one_process_{args.workers}_threads": (1, args.workers),
                f"sharded_{args.workers}_workers": (args.workers, 1)}
    one_pass(args.workers, 1)  # warm-up: the worker processes' imports, the dataset's first load
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved, so slow phases of a shared machine hit all alike
        for name, (workers, threads) in variants.items():
            times[name].append(one_pass(workers, threads))
    figures = {f"{name}_s": statistics.median(t) for name, t in times.items()}
    # what sharding costs besides the shards' own work: the worker group's start, the assembly
    figures["sharded_slowest_shard_s"] = statistics.median(shard_seconds[1:])  # [0]: the warm-up
    figures["sharded_overhead_s"] = figures[f"sharded_{args.workers}_workers_s"] - figures["sharded_slowest_shard_s"]
    sharded = figures[f"sharded_{args.workers}_workers_s"]
    ratios = {f"speedup_vs_{name}": figures[f"{name}_s"] / sharded for name in variants if not name.startswith("sharded")}
    record("w2s_shard", torch.device("cpu"), vars(args), figures, ratios)
    ray.shutdown()


if __name__ == "__main__":
    main()
