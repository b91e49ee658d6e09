#!/usr/bin/env bash
# Every GPU check in one go (about 5-8 minutes on one H200):
#   RESNET_CORE_DATA=/path/to/cifar10-jpeg scripts/gpu_check.sh OUTDIR
# 1. the `gpu` tests; 2. the benchmark for resnet20 and resnet56 at batch 128 and 512;
# 3. a shortened paper-recipe resnet20 run on $RESNET_CORE_DATA. Logs and JSON go to OUTDIR.
set -uo pipefail
out="${1:?usage: scripts/gpu_check.sh OUTDIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"

for model in resnet20 resnet56; do
  for batch in 128 512; do
    timeout 120 python3 -m resnet_core.bench --model "$model" --device cuda --batch-size "$batch" \
      --steps 50 --rounds 3 --json 2>&1 | tee "$out/bench-$model-$batch.log"
    tail -n 1 "$out/bench-$model-$batch.log" > "$out/bench-$model-$batch.json"
  done
done

if [ -n "${RESNET_CORE_DATA:-}" ]; then
  timeout 240 python3 -m resnet_core.train --model resnet20 --recipe paper --iterations 6000 \
    --data "$RESNET_CORE_DATA" --device cuda --results "$out/results" --quiet 2>&1 | tee "$out/train-resnet20.log"
  cp "$out"/results/runs/*.json "$out/train-resnet20-record.json" 2>/dev/null || true
else
  echo "RESNET_CORE_DATA is unset: skipped the paper-recipe run" | tee "$out/train-resnet20.log"
fi
