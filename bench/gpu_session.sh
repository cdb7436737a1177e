#!/usr/bin/env bash
# Every GPU figure of the speed work in one device call of at most 9.75 minutes (the device tool allows 10 per
# command and 15 per session, start-up included). Each step has its own time limit, so a slow one cannot eat
# the next; every script rewrites its JSON as it goes, so a step cut short keeps what it measured.
#
#   OUT=/some/dir bash bench/gpu_session.sh      # JSON, session.log, machine.txt under $OUT (default: gpu-out/)
#   SMOKE=1 OUT=/tmp/s bash bench/gpu_session.sh  # every step with --smoke (tiny config, CPU): the plumbing
#
#   1. bench/gpu.py: the race with transformers (numerics, pre-training 128 x 256 and 512 x 32, eager and
#      compiled, inference with CUDA graphs), compiled contenders skipped past its --budget-s (the layer
#      stack's compile is longer since session 10: the budget took step 2's time, a rerun with a warm cache)
#   2. bench/probe_attention.py (session 23), ~20 s: attention forward + backward at 128 x 256 and 512 x 32 on
#      cuDNN's varlen kernel against FlashAttention-2's (shipped; 5.6-5.7 ms of either step), with padded SDPA
#      beside them, cuDNN's agreement without dropout, and whether its ops have the Meta kernels a compiled
#      path needs. (Until session 22 this step raced the compiled Trainer against the bench's loop: settled.)
#   3. bench/gpu.py again, pre-training only (session 24): the whole compiled step with its attention on cuDNN
#      (bench/cudnn_attention.py: custom ops torch.compile can trace, checked against FlashAttention first)
#      against the shipped compiled step and eager transformers, in one process
#   4. bench/probe_bias_grad.py at 512 x 32 (session 23), when under 440 s have gone: which generated code
#      calls `aten.sum` (46 reduce kernels per compiled step in session 22's profile, 0.8 ms of 27.8 ms), and
#      the step with each linear written as matmul + bias add against addmm, each compiled cold in its own
#      cache; the code log comes back gzipped
#   5. bench/gpu_cli_check.py: `bertkit predict --device cuda` (bf16 autocast) against the CPU, end to end,
#      when under 545 s have gone
# (Until session 23 a step profiled the compiled step at 512 x 32 with bench/gpu_profile.py: kernel-bound,
# 27.8 ms of kernels per 29.2 ms step in session 22, settled.)
set -u
OUT=$(realpath -m "${OUT:-gpu-out}")
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARG=--smoke; LONG=(--seq 48 --batch 3); else SMOKE_ARG=; LONG=(--seq 512 --batch 32); fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
    'cudnn', torch.backends.cudnn.version())"
} > "$OUT/machine.txt" 2>&1
# a fresh compile cache: step 1 compiles cold, the later steps find what it cached (outside $OUT: not fetched)
export TORCHINDUCTOR_CACHE_DIR
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
LOG="$OUT/session.log"   # every step's output in one file: the device tool returns only 8 files per call
run() {  # run NAME SECONDS COMMAND...: one step under its own time limit, its output appended to $LOG
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit $limit s, at $SECONDS s)" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  echo "$name exit $?" >> "$OUT/machine.txt"
}
run gpu.py 365 python bench/gpu.py $SMOKE_ARG --out "$OUT/gpu.json" --budget-s 300
# cuDNN's varlen attention against the shipped FlashAttention-2, kernels alone (~20 s)
run probe_attention 45 python bench/probe_attention.py $SMOKE_ARG --out "$OUT/attention.json"
# the whole step on cuDNN's attention, raced against the shipped step (its compiled code cached by step 1)
run cudnn_race 170 python bench/gpu.py $SMOKE_ARG --only pretrain --budget-s 600 --out "$OUT/cudnn-race.json" \
    --contenders transformers "bertkit + compile" "bertkit cuDNN attention + compile"
# where the compiled step's aten::sum calls come from, and the linears as matmul + bias add: compiled cold, in a
# cache of their own inside the shared one (removed with it); 440 + 110 s, then the last step's 35: <= 585 s
if [ "$SECONDS" -lt 440 ]; then
  echo "=== probe_bias_grad (limit 110 s, at $SECONDS s)" >> "$LOG"
  TORCHINDUCTOR_CACHE_DIR="$TORCHINDUCTOR_CACHE_DIR/probe" TORCH_LOGS=output_code timeout 110 \
      python bench/probe_bias_grad.py $SMOKE_ARG "${LONG[@]}" 2> "$OUT/probe-code.log" >> "$LOG"
  echo "probe_bias_grad exit $?" >> "$OUT/machine.txt"
  python bench/probe_bias_grad.py --summarize "$OUT/probe-code.log" >> "$LOG" 2>&1
  gzip -f "$OUT/probe-code.log"
fi
if [ "$SECONDS" -lt 545 ]; then  # the end-to-end CLI check, measured in earlier sessions, only if time is left
  run gpu_cli_check 35 python bench/gpu_cli_check.py $SMOKE_ARG --out "$OUT/cli.json"
fi
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
sed -n '/^=== gpu.py (/,/^=== /p' "$LOG" | grep "^| \|^total"
grep -h "^  pretrain seq" "$LOG"   # both races, with each compile's warm-up time
grep -h "^  round \|^round \|^--- \|^    sum x\|^[0-9]* x [0-9]*  " "$LOG"
grep -h '"label_agreement"' "$LOG" | tail -n 1
cat "$OUT/machine.txt"
