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
#   2. bench/gpu_profile.py at 512 x 32 (session 24), where the compiled step is on the 2x line: its profile,
#      with where the host's aten::sum / copy_ / fill_ calls come from (46 ATen reduction kernels per step in
#      session 22's profile, which the compiled code does not call: session 24's code log), and two levers
#      timed against the compiled step in one process: the clipping's scale handed to fused AdamW (one read of
#      the gradients less) and Inductor's wrapper in C++ (the host's cost per launched kernel; after the
#      others, as its compile is the longest and may fail where the machine has no C++ compiler), then both
#      (from the C++ wrapper's compile cache)
#   3. bench/gpu_profile.py at 128 x 256, when under 455 s have gone: attention as two matrix products around
#      one fused softmax + dropout kernel on the padded grid, in place of FlashAttention's varlen kernel (5.8 ms of
#      the step's 47 ms kernel time in session 22, where short sequences leave it far from its rate), profiled to
#      show its attention kernels' time (the host-side levers are left to 512 x 32: this shape is kernel-bound,
#      and a fresh compile of the lever takes about half of this step's 90 s)
#   4. tests/test_cuda.py, when under 530 s have gone: the tests only a GPU runs (a selection plan on the device,
#      the CUDA random states through a checkpoint, the model against transformers in fp32 and in bf16 through
#      the varlen kernel); CI's machines have no GPU and skip them
#   5. bench/gpu_cli_check.py: `bertkit predict --device cuda` (bf16 autocast) against the CPU, end to end,
#      when under 550 s have gone
# Settled and retired from the script (the benches stay, with their figures in docs/PERFORMANCE.md):
# bench/probe_attention.py and the cuDNN-attention race (session 24: cuDNN's varlen path is 200-265x slower with
# wrong gradients on torch 2.11), bench/probe_bias_grad.py (session 24: no gain), the compiled Trainer's race
# (session 22) and the 512 x 32 profile's ways of compiling (session 22).
set -u
OUT=$(realpath -m "${OUT:-gpu-out}")
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARG=--smoke; LONG=(--seq 48 --batch 3); else SMOKE_ARG=; LONG=(--seq 512 --batch 32); fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
    'cudnn', torch.backends.cudnn.version())"
  echo "g++: $(command -v g++) nvcc: $(command -v nvcc) CUDA_HOME: ${CUDA_HOME:-unset}"   # the C++ wrapper's needs
} > "$OUT/machine.txt" 2>&1
# a fresh compile cache: step 1 compiles cold, the later steps find what it cached (outside $OUT: not fetched)
export TORCHINDUCTOR_CACHE_DIR
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
LOG="$OUT/session.log"   # every step's output in one file: the device tool returns only 8 files per call
run() {  # run NAME SECONDS COMMAND...: one step under its own time limit, its output appended to $LOG
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit $limit s, at $SECONDS s)" >> "$LOG"
  timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  echo "$name exit $?" >> "$OUT/machine.txt"
}
run gpu.py 330 python bench/gpu.py $SMOKE_ARG --out "$OUT/gpu.json" --budget-s 300
# the compiled step at 512 x 32 profiled, where its host operators come from, and two levers against it (step 1
# ends by 9 + 330 s, this one by 569 s)
run "gpu_profile 512" 230 python bench/gpu_profile.py $SMOKE_ARG "${LONG[@]}" --contender "bertkit + compile" \
    --op-origins aten::sum aten::copy_ aten::fill_ --ablation "compiled" \
    --ablation "compiled, clipping inside fused AdamW" --ablation "compiled, C++ wrapper" \
    --ablation "compiled, C++ wrapper + clipping inside fused AdamW" --out "$OUT/profile-512.json"
if [ "$SECONDS" -lt 455 ]; then  # 455 + 90, then the last step's 35: <= 580 s
  run "gpu_profile 128" 90 python bench/gpu_profile.py $SMOKE_ARG --no-contenders --ablation "compiled" \
      --ablation "compiled, attention as matmuls" --profile-ablation "compiled, attention as matmuls" \
      --out "$OUT/profile-128.json"
fi
if [ "$SECONDS" -lt 530 ]; then  # 530 + 40: <= 570 s
  run tests/test_cuda.py 40 python -m pytest -q -o addopts="" -p no:cacheprovider -rs tests/test_cuda.py
fi
if [ "$SECONDS" -lt 550 ]; then  # the end-to-end CLI check, measured in earlier sessions, only if time is left
  run gpu_cli_check 35 python bench/gpu_cli_check.py $SMOKE_ARG --out "$OUT/cli.json"
fi
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
sed -n '/^=== gpu.py (/,/^=== /p' "$LOG" | grep "^| \|^total"
grep -h "^  pretrain seq" "$LOG"   # with each compile's warm-up time
grep -h "^ablation\|^== \|host threads\|device gaps\|   gap \|   host \|   aten::" "$LOG"
grep -h '"label_agreement"' "$LOG" | tail -n 1
sed -n '/^=== tests\/test_cuda.py (/,/^=== /p' "$LOG" | grep "passed\|failed\|SKIPPED\|FAILED\|Error"
cat "$OUT/machine.txt"
