"""Operations per training step: one fused trial of K members against K single trials.

At small batches a GPU step is bound by launching kernels, not by computing them (an H100 trained
resnet8x4 at 17.6k images/s at batch 64 against 41k at batch 512). There, what a fused trial of
K members saves over K sequential trials is at most the ratio of their kernel launches. This
counts the aten operations that reach a kernel (views excluded) in one forward and backward of a
single trial (KD, or ``--loss``) and of a fused trial with the vmap forward, and prints
``K x single / fused``: the launch-bound ceiling of fused over sequential. The optimiser step is
counted apart, as its parameter groups: on CUDA each group is one fused kernel (``fused=True``),
on the CPU it runs per parameter, which would swamp the count with what a GPU does not launch.

It runs on any device in seconds (the count does not depend on the device; on a GPU the same
operations launch). With ``--before REV`` nothing else is needed to compare: it counts again
in a worktree of that revision, in a subprocess, and prints both.

    .venv/bin/python bench/fused_ops.py                                # resnet8x4, K = 16
    .venv/bin/python bench/fused_ops.py --student cnn_small --members 4 --image-size 8
    .venv/bin/python bench/fused_ops.py --loss crd                     # another loss (KD by default)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from common import ROOT, code_version, pick_device, record  # noqa: E402  (sets sys.path)
import sweep_gpu  # noqa: E402
from trainables.runtime.op_count import OpCount, uncounted  # noqa: E402
from trainables.runtime.session import LocalSession  # noqa: E402
from trainables.training.classifier_loop import ClassifierRun  # noqa: E402
from trainables.training.fused import FusedRun  # noqa: E402
from trainables.training.views import PlainViews  # noqa: E402

def count(args) -> dict[str, int]:
    device = pick_device(args.device)
    size = argparse.Namespace(batch=args.batch, warmup=1, steps=2, image_size=args.image_size, classes=args.classes,
                              student=args.student, fused_compile=False, loss=args.loss)
    data, teacher = sweep_gpu.data_for(size, device)
    idx = sweep_gpu.batches(size, device)
    m = sweep_gpu.member(size, sweep_gpu.configurations(1)[0], data, 0)
    single = ClassifierRun(m.model, data, m.loss_fn, m.optim, LocalSession(device), 0, teacher, PlainViews(), {})
    single.model.train()
    single.step(0, [idx[0]])  # the first step allocates optimiser state
    single.optimizer.step = uncounted(single.optimizer.step)  # counted as its groups
    with OpCount() as one:
        single.step(0, [idx[1]])
    members = [sweep_gpu.member(size, c, data, s) for s, c in enumerate(sweep_gpu.configurations(args.members))]
    fused = FusedRun(members, data, LocalSession(device), 0, teacher, None, {}, mode="vmap")
    fused.students.train()
    fused.step(0, idx[0], fused.prepare(idx[0]))
    fused.optimizer.step = uncounted(fused.optimizer.step)
    with OpCount() as many:
        fused.step(0, idx[1], fused.prepare(idx[1]))
    return {"single_ops": one.total, "single_groups": len(single.optimizer.param_groups),
            "fused_ops": many.total, "fused_groups": len(fused.optimizer.param_groups),
            "fused_top": dict(many.counts.most_common(12))}


def counted_at(rev: str, argv: list[str]) -> dict[str, int]:
    """The same count in a temporary worktree of ``rev`` (this script's copy runs there)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, rev], cwd=ROOT, check=True)
        try:
            # This script and what it counts with (the members it builds included), as they are now
            # (an older revision may lack them, or build KD members whatever --loss says).
            for name in ("bench/fused_ops.py", "bench/common.py", "bench/sweep_gpu.py", "trainables/runtime/op_count.py"):
                with open(os.path.join(ROOT, name)) as src, open(os.path.join(tree, name), "w") as dst:
                    dst.write(src.read())
            out = subprocess.run([sys.executable, os.path.join(tree, "bench", "fused_ops.py"), *argv, "--json"],
                                 cwd=tree, check=True, capture_output=True, text=True).stdout
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--loss", default="kd", help="the members' classifier loss (bench/sweep_gpu.py --loss)")
    ap.add_argument("--members", type=int, default=16, help="K, the fused trial's members")
    ap.add_argument("--batch", type=int, default=8, help="per member (the count does not depend on it)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--before", default="", help="also count at this git revision (a temporary worktree)")
    ap.add_argument("--json", action="store_true", help="print the counts as one JSON line only (no record)")
    args = ap.parse_args()
    argv = [a for a in sys.argv[1:] if not a.startswith("--before") and a != args.before]
    c = count(args)
    if args.json:
        print(json.dumps(c))
        return
    k = args.members
    figures = {"single_ops_per_step": c["single_ops"], "fused_ops_per_step": c["fused_ops"],
               "single_optimizer_groups": c["single_groups"], "fused_optimizer_groups": c["fused_groups"]}
    ratios = {"k_single_over_fused_ops": k * c["single_ops"] / c["fused_ops"],
              "k_single_over_fused_with_cuda_optimizer": k * (c["single_ops"] + c["single_groups"])
              / (c["fused_ops"] + c["fused_groups"])}
    print(f"{args.student}, K = {k}: fused step's most frequent operations {c['fused_top']}")
    if args.before:
        b = counted_at(args.before, argv)
        figures.update(before_rev=args.before, before_fused_ops_per_step=b["fused_ops"])
        ratios["before_over_now_fused_ops"] = b["fused_ops"] / c["fused_ops"]
    record("fused_ops", pick_device(args.device), {**vars(args), "code": code_version()}, figures, ratios)


if __name__ == "__main__":
    main()
