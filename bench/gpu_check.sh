#!/usr/bin/env bash
# Issue 18's GPU figures in one call on a lent GPU machine (no Ray, no network there; see the
# device notes): the fused-sweep bench at the size, every loss's step time against KD,
# the vectorised probe sweep on the GPU, and the sync-debug tests. Results go to $OUT (or
# bench/results when OUT is unset), each line naming the device.
#
# Wheels the machine lacks travel in .whl/ (git-ignored; carry it):
#   .venv/bin/pip download --no-deps --python-version 3.12 --only-binary=:all: \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.3 pydantic_core==2.50.4 \
#     annotated-types==0.8.0 typing_inspection==0.4.5 kornia==0.9.0 kornia_rs==0.2.0
# then, from the repository root on the device:  bash bench/gpu_check.sh
set -uo pipefail
if [ -d .whl ]; then
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
run() { echo "== $*"; timeout 240 "$@" 2>&1 | tail -25; }
run python bench/sweep_gpu.py --device cuda --dry-run --batch-sizes 64,512 --student resnet8x4 --image-size 32 --classes 100
run python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64,512 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --procs 4 --rounds 1
run python bench/loss_steps.py --device cuda --batch 512 --steps 20 --rounds 3
run python bench/probe_sweep.py --device cuda
run python -m pytest -q -p no:randomly tests/test_no_host_sync.py -k cuda
cp bench/results/sweep_gpu.jsonl bench/results/loss_steps.jsonl bench/results/probe_sweep.jsonl "$out"/ 2>/dev/null
