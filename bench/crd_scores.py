"""CRD's contrast scores, forward and backward, computed several ways: where a CRD step's extra
device time goes, and what each way costs in accuracy.

A CRD step scores each anchor (B per side, two sides) against 1 + K rows of a memory bank of n
rows (trainables/losses/crd.py). ``dense``: one fp32 matmul of the anchors against the whole bank,
then the contrast columns gathered, with autograd's backward (the gradients scattered into a
(2, B, n) matrix that multiplies the bank: on an H200 cuBLAS ran that matmul on few blocks, 1.8 ms
of the step). ``dense_parts``: what the loss runs (``ContrastDots``): the same forward, and a
backward that reduces over the bank in parts, one batched matmul. ``dense_tf32``: ``dense`` with
TF32 tensor cores (fp32 inputs rounded to a 10-bit mantissa; the loss does not use it).
``gathered``: the contrast rows gathered, (2, B, 1 + K, D), and one batched dot product (what the
loss runs where that moves fewer bytes, ImageNet's n at small batches).

For each way: ms per forward + backward (median of rounds, the GPU drained around each), and the
largest error of exp(dot / tau), relative, against the same scores in float64. ``--kernels N``
lists the N kernels that take most device time in ``dense`` and ``dense_parts``; ``--parts P``
sets the number of parts (the loss's rule by default: one on a CPU).

    .venv/bin/python bench/crd_scores.py --device cuda            # CIFAR's sizes: n 50,000, B 512
    .venv/bin/python bench/crd_scores.py --device cpu --rounds 3  # the same sizes on the CPU

Appends a JSON line to bench/results/crd_scores.jsonl.
"""
from __future__ import annotations

import argparse

import torch

from common import kernel_times, median_of, pick_device, record  # noqa: E402  (sets sys.path)
from trainables.losses import crd  # noqa: E402
from trainables.losses.crd import ContrastDots  # noqa: E402


def scores(anchors, bank, contrast, way: str, tau: float) -> torch.Tensor:
    if way == "gathered":
        dots = (bank[:, contrast] @ anchors.unsqueeze(-1)).squeeze(-1)
    elif way == "dense_parts":
        dots = ContrastDots.apply(anchors, bank, contrast.expand(2, -1, -1))
    else:
        dots = torch.bmm(anchors, bank.transpose(1, 2)).gather(2, contrast.expand(2, -1, -1))
    return torch.exp(dots / tau)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=50_000, help="memory-bank rows (the training set)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--k", type=int, default=4096, help="negatives per anchor")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--tau", type=float, default=0.07)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="forward + backward passes per timed run")
    ap.add_argument("--kernels", type=int, default=10, metavar="N")
    ap.add_argument("--ways", default="dense,dense_parts,dense_tf32,gathered")
    ap.add_argument("--parts", type=int, default=None,
                    help="dense_parts' number of parts (default: the loss's rule, reduction_parts: one on a CPU)")
    args = ap.parse_args()
    if args.parts is not None:
        crd.reduction_parts = lambda n, device: args.parts
    device = pick_device(args.device)
    g = torch.Generator(device=device).manual_seed(0)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, device=device, generator=g), dim=-1)

    anchors0, bank = unit(2, args.batch, args.dim), unit(2, args.n, args.dim)
    contrast = torch.randint(0, args.n, (args.batch, 1 + args.k), device=device, generator=g)
    weights = torch.rand(2, args.batch, 1 + args.k, device=device, generator=g)
    want = scores(anchors0.double(), bank.double(), contrast, "dense", args.tau)

    ways = args.ways.split(",")
    if device.type != "cuda":
        ways = [w for w in ways if w != "dense_tf32"]  # tensor cores: CUDA only

    def make(way: str):
        def run() -> None:
            torch.backends.cuda.matmul.allow_tf32 = way == "dense_tf32"  # read when each matmul launches
            try:
                for _ in range(args.reps):
                    anchors = anchors0.detach().requires_grad_()
                    (scores(anchors, bank, contrast, way, args.tau) * weights).sum().backward()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
        return run

    runs, errors = {}, {}
    for way in ways:
        try:
            runs[way] = make(way)
            runs[way]()  # warm-up, and a way the device cannot run is left out here
            torch.backends.cuda.matmul.allow_tf32 = way == "dense_tf32"
            try:
                with torch.no_grad():
                    got = scores(anchors0, bank, contrast, way, args.tau).double()
            finally:  # a failed way must not leave TF32 on for the ways after it
                torch.backends.cuda.matmul.allow_tf32 = False
            errors[way] = float(((got - want).abs() / want).max())
        except (RuntimeError, NotImplementedError) as exc:
            print(f"  {way}: not run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            runs.pop(way, None)
    seconds = median_of(runs, device, args.rounds)
    base = seconds.get("dense")
    print(f"crd_scores on {device}: n {args.n}, batch {args.batch}, K {args.k}, D {args.dim}, two sides, "
          f"forward + backward")
    print(f"  {'way':<14}{'ms':>8}{'vs dense':>10}{'max rel. error':>16}")
    for way, s in seconds.items():
        ratio = f"{s / base:>10.2f}" if base else f"{'-':>10}"
        print(f"  {way:<14}{s / args.reps * 1e3:>8.3f}{ratio}{errors[way]:>16.2e}")
    if device.type == "cuda" and args.kernels:
        for way in ("dense", "dense_parts"):
            if way in runs:
                top = sorted(((t, name) for name, t in kernel_times(runs[way], device).items()), reverse=True)
                print(f"  {way}: top kernels (ms per forward + backward)")
                for seconds_, name in top[:args.kernels]:
                    print(f"    {seconds_ / args.reps * 1e3:7.3f}  {name[:110]}")
    record("crd_scores", device, vars(args), {f"{w}_ms": s / args.reps * 1e3 for w, s in seconds.items()}
           | {f"{w}_max_rel_error": e for w, e in errors.items() if w in seconds},
           {f"{w}_over_dense": s / base for w, s in seconds.items() if base and w != "dense"})


if __name__ == "__main__":
    main()
