#!/usr/bin/env bash
# A second, shorter GPU call for issue 18 (see gpu_check.sh): the fused sweep with both memory
# layouts after the pooling change, and kd_step at a size where the steady ratio is stable.
set -uo pipefail
export PYTHONUNBUFFERED=1
DEADLINE="${DEADLINE:-300}"
if [ -d .whl ]; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/gpu_check2.log"
run() {
  local limit=$1; shift
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== skipped (deadline): $*" | tee -a "$log"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== [${SECONDS}s, limit ${limit}s] $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$log" | grep -v "^  [a-z0-9_]*: "
  echo "== rc=${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$log"
  [ "$out" != bench/results ] && cp bench/results/sweep_gpu.jsonl bench/results/kd_step.jsonl "$out/" 2>/dev/null
}
S="--device cuda --configs 16 --batch-sizes 64,512 --steps 30 --warmup 5 --student resnet8x4 --image-size 32 --classes 100 --rounds 1"
run 80 python bench/sweep_gpu.py $S --ways sequential,fused
run 80 python bench/sweep_gpu.py $S --ways sequential,fused --fused-channels-last off
run 100 python bench/kd_step.py --student resnet8x4 --teacher resnet32x4 --image-size 32 --classes 100 \
  --train-size 50000 --batch-size 512 --epochs 2 --rounds 3 --device cuda
run 40 python bench/sweep_gpu.py $S --ways fused --fused-forward loop
