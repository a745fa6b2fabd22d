#!/usr/bin/env bash
# Issue 18's GPU figures in one call on a lent GPU machine (no Ray, no network there; see the
# device notes): CRD's contrast scores, every loss's step time against KD (eager, and each step a
# CUDA graph), the fused-sweep bench at the size (fused_forward auto, which is streams on
# CUDA; vmap eager, and with the fused step compiled as CUDA graphs), the CUDA-only tests, KD
# against a bare step for both students, compile modes inside a trial, the vectorised probe sweep
# on the GPU, the timm policies' cost and Sel-CL's step. Each step has its own time limit, and all of them together
# stay under DEADLINE seconds, so what finished comes back even when a step hangs. Results go to
# $OUT (or bench/results when OUT is unset), each line naming the device.
#
# Wheels the machine lacks travel in .whl/ (git-ignored; carry it):
#   .venv/bin/pip download --no-deps --python-version 3.12 --only-binary=:all: \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.3 pydantic_core==2.50.4 \
#     annotated-types==0.8.0 typing_inspection==0.4.5 kornia==0.9.0 kornia_rs==0.2.0
# then, from the repository root on the device:  bash bench/gpu_check.sh
# The goals name an H100: ask for that kind by name (a call naming none may get an H200,
# as on 2026-11-28, whose figures are in bench/results/gpu_check.log, gpu calls 5-8).
set -uo pipefail
export PYTHONUNBUFFERED=1
DEADLINE="${DEADLINE:-560}"  # seconds for all steps; a device call may run 600
if [ -d .whl ]; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
collect() {  # the JSON lines as one tar: the device call brings back at most 8 files
  [ "$out" = bench/results ] && return
  local names=()
  for f in crd_scores sweep_gpu loss_steps probe_sweep kd_step compile_trial augment selcl_step; do
    [ -f "bench/results/$f.jsonl" ] && names+=("$f.jsonl")
  done
  [ "${#names[@]}" -gt 0 ] && tar -C bench/results -cf "$out/results.tar" "${names[@]}"
}
run() {  # run LIMIT CMD...: at most LIMIT seconds, and never past the deadline
  local limit=$1; shift
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== skipped (deadline): $*" | tee -a "$log"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== [${SECONDS}s, limit ${limit}s] $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$log" | tail -40
  echo "== rc=${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$log"
  collect
}
# Ordered by what the goals need first (every loss against KD: CRD's step is the one left
# over 1.1x; fused K = 16 at batch 64 on an H100, measured on an H200 so far), so the deadline cuts
# the figures measured before. First of all: single trials replay their steps as CUDA graphs by
# default on CUDA since 2026-11-28 (cuda_graphs: auto), written without a GPU: its tests, then its
# speed inside a trial against eager, and KD's cached step with it against a bare eager step.
run 120 python -m pytest -q -p no:randomly -rs tests/test_trial_graphs.py tests/test_no_host_sync.py -k "gpu or replayed"
run 90 python bench/compile_trial.py --student resnet8x4 --teacher resnet8x4 --image-size 32 --classes 100 \
  --train-size 20000 --batch-sizes 64,512 --epochs 3 --modes eager,graphs --device cuda
run 100 python bench/kd_step.py --student resnet8x4 --teacher resnet32x4 --image-size 32 --classes 100 \
  --train-size 50000 --batch-size 512 --epochs 2 --rounds 3 --device cuda
# CRD's contrast scores: the backward reduced in parts (what the loss runs now) against autograd's
# plain one, whose matmul took 1.8 ms of CRD's 2.9 ms over KD's on an H200.
run 60 python bench/crd_scores.py --device cuda --rounds 5 --reps 5 --kernels 8
# Every loss against KD, eager and with each step a CUDA graph (a one-member fused trial with
# fused_forward streams: the losses' kernels against KD's, with no launch cost).
run 90 python bench/loss_steps.py --device cuda --batch 512 --steps 20 --rounds 3 --kernels 6
run 90 python bench/loss_steps.py --device cuda --batch 512 --steps 20 --rounds 3 --graphs
# fused_forward auto (streams on CUDA: each member's step a CUDA graph on a stream of its own)
# against sequential trials as they run by default (each step a CUDA graph too), batch 64 (the 3x
# goal) to 512; then at batch 64 against sequential eager trials, as measured before.
run 120 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64,128,256,512 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways sequential,fused
run 60 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways sequential --sequential-graphs false
# The eager vmap fused step (what auto runs with DDP workers or compile) against sequential trials.
run 90 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways sequential,fused --fused-forward vmap
# The fused step as CUDA graphs (compile: reduce-overhead) against sequential eager trials, batch 64.
run 180 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways sequential,fused --fused-forward vmap \
  --fused-compile reduce-overhead
# The CUDA-only tests (the graphs and compile paths' correctness on a GPU).
run 150 python -m pytest -q -p no:randomly -rs tests/test_no_host_sync.py tests/test_compile_modes.py \
  tests/test_fused_compile.py tests/test_member_norm.py tests/test_member_graphs.py tests/test_fused_forward_mode.py \
  -k "cuda or gpu or end_to_end"
# The same at batch 64 with 32 hardware work queues instead of CUDA's default 8 (16 streams share 8
# queues by default, and kernels of two members on one queue wait for each other).
run 60 env CUDA_DEVICE_MAX_CONNECTIONS=32 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 \
  --steps 30 --warmup 5 --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways fused --fused-forward streams
# As a trial with compile: reduce-overhead runs them: the student and (new) the loss each compiled
# as CUDA graphs; the losses with the most operators.
run 150 python bench/loss_steps.py --device cuda --batch 512 --steps 20 --rounds 3 --compile reduce-overhead \
  --losses align_uniform,crd,dkd
# A fused CRD sweep (its members' projectors and banks stacked: 2238 -> 286 operations per step).
run 90 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64 --steps 20 --warmup 3 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways sequential,fused --fused-forward vmap --loss crd
# The seed spaces' timm policies drawn per image, against kornia's in groups (not yet measured on a GPU).
run 60 python bench/augment.py --model resnet8x4 --image-size 32 --train-size 16384 --batch-size 512 \
  --classes 100 --rounds 2 --recipes randaugment timm_randaugment autoaugment timm_autoaugment
# Sel-CL's stage at CIFAR-10's size against a plain CE step of PreAct-ResNet18 (never measured on a GPU).
run 120 python bench/selcl_step.py --device cuda --model preact_resnet18 --image-size 32 --classes 10 \
  --train-size 50000 --batch-size 128 --k 250 --queue-per-class 1000 --steps 10 --rounds 2
run 100 python bench/kd_step.py --student resnet18 --teacher resnet56 --image-size 32 --classes 100 \
  --train-size 50000 --batch-size 512 --epochs 2 --rounds 3 --device cuda
run 40 python bench/sweep_gpu.py --device cuda --dry-run --batch-sizes 64,512 --student resnet8x4 --image-size 32 --classes 100
run 40 python bench/probe_sweep.py --device cuda --k 8 --epochs 3
run 150 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64,128,256,512 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --procs 4 --rounds 1
run 60 python bench/sweep_gpu.py --device cuda --configs 16 --batch-sizes 64,512 --steps 30 --warmup 5 \
  --student resnet8x4 --image-size 32 --classes 100 --rounds 1 --ways fused --fused-forward loop
# Measured before (README): last, where the deadline cuts first.
run 220 python bench/compile_trial.py --student resnet8x4 --teacher resnet8x4 --image-size 32 --classes 100 \
  --train-size 20000 --batch-sizes 64,512 --epochs 3 --modes eager,reduce-overhead --device cuda
collect
