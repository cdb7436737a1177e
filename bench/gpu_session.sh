#!/usr/bin/env bash
# Every GPU figure of the speed work in one device call of at most 9.75 minutes (the device tool allows 10 per
# command and 15 per session, start-up included). Each step has its own time limit, so a slow one cannot eat
# the next; every script rewrites its JSON as it goes, so a step cut short keeps what it measured.
#
#   OUT=/some/dir bash bench/gpu_session.sh      # results and logs under $OUT (default: gpu-out/)
#   SMOKE=1 OUT=/tmp/s bash bench/gpu_session.sh  # every step with --smoke (tiny config, CPU): the plumbing
#
#   1. bench/gpu.py: the race with transformers (numerics, pre-training 128 x 256 and 512 x 32, eager and
#      compiled, inference with CUDA graphs), compiled contenders skipped past its --budget-s
#   2. bench/gpu.py again for bertkit's pre-training alone, eager and compiled, now with a warm compile cache
#      (sessions 8 and 9 saw compiled steps 30-40% slower in such reruns while the embeddings ran eagerly;
#      compile_layers now compiles them too, and this checks that warm-cache runs are fast with it)
#   3. bench/gpu_profile.py at 128 x 256: the compiled step (layers and embeddings), against the layers alone
#      (session 9: the GPU then waits on the host) and with the MLM head compiled too (the kernel profile at
#      128 and the other levers were measured in sessions 4-8)
#   4. bench/gpu_profile.py at 512 x 32: where the time goes by kernel kind, and the same three ablations
#   5. bench/gpu_cli_check.py: `bertkit predict --device cuda` (bf16 autocast) against the CPU, end to end,
#      when under 500 s have gone
set -u
OUT=$(realpath -m "${OUT:-gpu-out}")
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ "${SMOKE:-0}" = 1 ]; then SMOKE_ARG=--smoke; LONG=(--seq 48 --batch 3); else SMOKE_ARG=; LONG=(--seq 512 --batch 32); fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
    'cudnn', torch.backends.cudnn.version())"
} > "$OUT/machine.txt" 2>&1
# a fresh compile cache: step 1 compiles cold, step 2 finds what it cached (outside $OUT: not fetched)
export TORCHINDUCTOR_CACHE_DIR
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
timeout 330 python bench/gpu.py $SMOKE_ARG --out "$OUT/gpu.json" --budget-s 265 > "$OUT/gpu.log" 2>&1
echo "gpu.py exit $?" >> "$OUT/machine.txt"
timeout 50 python bench/gpu.py $SMOKE_ARG --only pretrain --contenders "bertkit" "bertkit + compile" \
    --out "$OUT/gpu-warm-cache.json" > "$OUT/gpu-warm-cache.log" 2>&1
echo "gpu.py again, warm compile cache, exit $?" >> "$OUT/machine.txt"
LEVERS=(--ablation "compiled" --ablation "compiled, eager embeddings" --ablation "compiled, MLM head too")
timeout 95 python bench/gpu_profile.py $SMOKE_ARG --no-contenders "${LEVERS[@]}" \
    --out "$OUT/profile-128.json" > "$OUT/profile-128.log" 2>&1
echo "gpu_profile 128 exit $?" >> "$OUT/machine.txt"
timeout 110 python bench/gpu_profile.py $SMOKE_ARG "${LONG[@]}" "${LEVERS[@]}" \
    --out "$OUT/profile-512.json" > "$OUT/profile-512.log" 2>&1
echo "gpu_profile 512 exit $?" >> "$OUT/machine.txt"
if [ "$SECONDS" -lt 500 ]; then  # the end-to-end CLI check, measured in earlier sessions, only if time is left
  timeout 35 python bench/gpu_cli_check.py $SMOKE_ARG --out "$OUT/cli.json" > "$OUT/cli.log" 2>&1
  echo "gpu_cli_check exit $?" >> "$OUT/machine.txt"
fi
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
tail -n 40 "$OUT/gpu.log"
grep -h "ablation" "$OUT/profile-128.log" "$OUT/profile-512.log"
grep -h "pretrain seq" "$OUT/gpu-warm-cache.log"
tail -n 1 "$OUT/cli.log" 2>/dev/null
cat "$OUT/machine.txt"
