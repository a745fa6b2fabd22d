"""K probe configurations on cached features: vectorised (one batched computation, what a
``w2s_probe`` trial with ``vectorize`` runs) against one config per loop in the seed's style
(openai/weak-to-strong ``train_logreg``: a ``DataLoader`` over a ``TensorDataset``, ``nn.Linear``,
Adam, per-step cosine, a train-accuracy ``.item()`` per step, a test pass per epoch), measured in
the same run. Each configuration trains a W2S probe on weak soft labels and a ground-truth ceiling
probe, as the seed does.

    .venv/bin/python bench/probe_sweep.py                   # 10k x 2048 features, 100 classes, K=64
    .venv/bin/python bench/probe_sweep.py --dim 384 --classes 10 --epochs 5
    .venv/bin/python bench/probe_sweep.py --device cuda                 # both sides on the GPU

``--device`` is where both sides train: the vectorised probes' features, targets and weights, and the
looped side's ``nn.Linear`` and loss, which gets each batch moved there from the CPU-side
``DataLoader`` (as the seed's ``train_logreg`` moves each batch with ``.cuda()``).

Prints both times (on the CPU: CPU time of this process, the ratio that counts, and wall time, which
other load on a shared machine inflates; on a GPU the wall times, taken after the device drained, count) and appends a JSON line to bench/results/probe_sweep.jsonl.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import device_name, pick_device, sync  # noqa: E402
from trainables.training.linear_probe import ProbeSpec, reference_loss, train_probes  # noqa: E402
from trainables.losses import create_loss  # noqa: E402
from trainables.w2s_probe.loop import probe_plan  # noqa: E402
from trainables.w2s_probe.params import ProbeConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "probe_sweep.jsonl")


def synthetic_features(n: int, dim: int, classes: int, seed: int = 0):
    """Class-clustered features, ground truth, and a weak teacher that is right ~60% of the time."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    centres = torch.randn(classes, dim, generator=gen)
    x = centres[y] * 0.3 + torch.randn(n, dim, generator=gen)
    noisy = torch.where(torch.rand(n, generator=gen) < 0.6, y, torch.randint(0, classes, (n,), generator=gen))
    weak_logits = 3.0 * nn.functional.one_hot(noisy, classes).float() + torch.randn(n, classes, generator=gen)
    return x, y, torch.softmax(weak_logits, -1)


def sweep_configs(k: int, epochs: int) -> list[ProbeConfig]:
    """A W2S probe sweep: learning rate x weight decay x auxiliary-confidence weight x label type."""
    grid = itertools.product([3e-4, 1e-3, 3e-3, 1e-2], [0.0, 1e-4], [0.0, 0.25, 0.5, 0.75], ["soft", "hard"])
    configs = [ProbeConfig(lr=lr, weight_decay=wd, epochs=epochs, w2s_labels=labels, w2s_loss="auxconf",
                           loss_params={"aux_coef": aux}) for lr, wd, aux, labels in grid]
    return configs[:k]


def seed_style_logreg(x_train, y_train, evals, spec: ProbeSpec, classes: int, batch_size: int,
                      device: torch.device) -> dict:
    """The seed's ``train_logreg``, with the auxiliary-confidence loss when the config asks for it:
    the training set stays on the CPU behind a ``DataLoader`` and each batch moves to ``device``."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), shuffle=True,
                                         batch_size=batch_size)
    model = nn.Linear(x_train.shape[1], classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    total = spec.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    aux = create_loss("auxconf", {"aux_coef": spec.aux_coef, "warmup_frac": spec.warmup_frac}).to(device)
    results, step = {}, 0
    for _ in range(spec.epochs):
        correct = seen = 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            pred = model(xb)
            loss = reference_loss(aux, pred, yb, spec, step / total) if yb.dim() > 1 else \
                nn.functional.cross_entropy(pred, yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            labels = yb.argmax(-1) if yb.dim() > 1 else yb
            correct += (pred.argmax(-1) == labels).float().sum().item()
            seen += len(labels)
        with torch.no_grad():
            for name, (x_eval, y_eval) in evals.items():
                results[name] = (model(x_eval).argmax(-1) == y_eval).float().mean().item()
    return results


def run_looped(data, configs, classes, batch_size, device) -> dict:
    x_train, y_train, q_train, x_test, y_test, q_test = data
    x_test, y_test, q_test = x_test.to(device), y_test.to(device), q_test.to(device)  # evaluated on the device
    evals = {"test": (x_test, y_test), "test_weak": (x_test, q_test.argmax(-1))}
    one_hot = nn.functional.one_hot(q_train.argmax(-1), classes).float()
    out = []
    for cfg in configs:
        plan = probe_plan(cfg)
        w2s_target = q_train if cfg.w2s_labels == "soft" else one_hot
        w2s = seed_style_logreg(x_train, w2s_target, evals, plan.w2s, classes, batch_size, device)
        strong = seed_style_logreg(x_train, y_train, evals, plan.strong, classes, batch_size, device)
        out.append((w2s["test"], strong["test"]))
    return {"trainings": 2 * len(configs), "accs": out}


def run_vectorised(data, configs, classes, batch_size, device) -> dict:
    x_train, y_train, q_train, x_test, y_test, _ = (t.to(device) for t in data)
    plans = [probe_plan(cfg) for cfg in configs]
    specs = sorted({s for plan in plans for s in (plan.w2s, plan.strong)}, key=repr)
    index = {s: i for i, s in enumerate(specs)}
    final: dict[int, float] = {}

    def on_epoch(view):
        preds = view.predict(x_test)
        accs = (preds == y_test).float().mean(1).tolist()  # one host read per epoch, not one per probe
        for j, i in enumerate(view.probe_ids):
            final[i] = accs[j]

    train_probes(x_train, {"weak_soft": q_train, "weak_hard": q_train.argmax(-1), "truth": y_train}, specs,
                 num_classes=classes, batch_size=batch_size, seed=0, on_epoch=on_epoch, device=device)
    accs = [(final[index[p.w2s]], final[index[p.strong]]) for p in plans]
    return {"trainings": len(specs), "accs": accs}


def timed(fn, data, configs, classes, batch_size, device):
    """(result, wall seconds, CPU seconds of this process), the device drained before and after."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(data, configs, classes, batch_size, device)
    sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples (train + test)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--k", type=int, default=64, help="probe configurations")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (1: CPU time is exact and immune to other load)")
    ap.add_argument("--device", default="cpu", help="where both sides train: cpu, cuda, cuda:1, auto (cuda when available)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    x, y, q = synthetic_features(args.n, args.dim, args.classes)
    n_train = int(args.n * (1 - args.test_fraction))
    data = (x[:n_train], y[:n_train], q[:n_train], x[n_train:], y[n_train:], q[n_train:])
    configs = sweep_configs(args.k, args.epochs)
    print(f"{len(configs)} probe configs, {n_train} x {args.dim} train features, {args.classes} classes, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} threads, on {device_name(device)}")

    vec, wall_vec, cpu_vec = timed(run_vectorised, data, configs, args.classes, args.batch_size, device)
    print(f"  vectorised: {wall_vec:8.1f} s wall, {cpu_vec:8.1f} s CPU  ({vec['trainings']} probes, one batched loop)")
    loop, wall_loop, cpu_loop = timed(run_looped, data, configs, args.classes, args.batch_size, device)
    print(f"  looped:     {wall_loop:8.1f} s wall, {cpu_loop:8.1f} s CPU  ({loop['trainings']} seed-style trainings)")
    steps = args.epochs * math.ceil(n_train / args.batch_size)
    per_vec = cpu_vec / (vec["trainings"] * steps) * 1e3
    per_loop = cpu_loop / (loop["trainings"] * steps) * 1e3
    gap = max(abs(a - b) for pair in zip(vec["accs"], loop["accs"]) for a, b in zip(*pair))
    ratio, wall_ratio = cpu_loop / cpu_vec, wall_loop / wall_vec
    print(f"  speed-up: {ratio:.1f}x CPU time ({wall_ratio:.1f}x wall)")
    print(f"    per probe-step (CPU time): {per_loop:.2f} ms looped vs {per_vec:.2f} ms vectorised ({per_loop / per_vec:.1f}x); "
          f"identical probes trained once: {loop['trainings']} -> {vec['trainings']} "
          f"({loop['trainings'] / vec['trainings']:.2f}x)")
    print(f"  largest test-accuracy difference between the two (different batch orders and inits): {gap:.4f}")
    record = {"bench": "probe_sweep", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "n_train": n_train,
              "dim": args.dim, "classes": args.classes, "k": len(configs), "epochs": args.epochs,
              "batch_size": args.batch_size, "threads": args.threads, "vectorised_cpu_s": round(cpu_vec, 3),
              "looped_cpu_s": round(cpu_loop, 3), "ratio": round(ratio, 2), "vectorised_wall_s": round(wall_vec, 3),
              "looped_wall_s": round(wall_loop, 3), "wall_ratio": round(wall_ratio, 2), "probes_vectorised": vec["trainings"],
              "trainings_looped": loop["trainings"], "per_probe_step_ratio": round(per_loop / per_vec, 2),
              "max_test_acc_gap": round(gap, 4), "device": device_name(device), "torch": torch.__version__, "cpu": platform.processor() or
              platform.machine(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
