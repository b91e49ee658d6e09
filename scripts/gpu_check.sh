#!/usr/bin/env bash
# Every GPU check in one go, on a CUDA machine; at most 8 minutes (the step limits below add up to
# 480 s, which tests/test_gpu_check.py holds them to):
#   RESNET_CORE_DATA=/path/to/cifar10-jpeg scripts/gpu_check.sh OUTDIR
# Steps: nvidia-smi; CUDA is visible to torch; the `gpu` tests; the benchmark of resnet20 and
# resnet56 at batch 128 and 512; a shortened paper-recipe resnet20 run on $RESNET_CORE_DATA
# (skipped when it is unset). OUTDIR (relative or absolute) gets one log per step, the JSON
# results and summary.txt. A failed or timed-out step does not stop the others; the script then
# prints the summary and exits 1. The interpreter is $PYTHON, else the `python` on PATH (the
# active virtual environment's), never a system python3.
set -euo pipefail
trap 'echo "gpu_check: stopped by an unexpected error at line $LINENO" >&2' ERR

if [ $# -ne 1 ]; then
  echo "usage: scripts/gpu_check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p -- "$1"
out="$(cd -- "$1" && pwd)"  # absolute before the cd below: a relative OUTDIR is the caller's
cd "$(dirname "$0")/.."
python="${PYTHON:-$(command -v python || true)}"
if [ -z "$python" ]; then
  echo "gpu_check: no python on PATH: activate the project's environment or set PYTHON" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: > "$summary"
failed=()

# step NAME SECONDS COMMAND...: COMMAND under a time limit, its output on the console and in
# OUTDIR/NAME.log; one line in the summary. Returns COMMAND's status (124: out of time).
step() {
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS rc=0
  echo "== $name (at most $limit s): $*"
  if timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"; then rc=0; else rc=$?; fi
  local took=$((SECONDS - started))
  if [ "$rc" -eq 0 ]; then
    echo "ok      $name (${took} s)" >> "$summary"
  else
    [ "$rc" -eq 124 ] && reason="timed out after $limit s" || reason="exit status $rc"
    echo "FAILED  $name (${took} s, $reason; see $out/$name.log)" >> "$summary"
    failed+=("$name")
  fi
  return "$rc"
}

# bench MODEL BATCH SECONDS: the benchmark, its last line (JSON) kept as OUTDIR/bench-MODEL-BATCH.json.
bench() {
  if step "bench-$1-$2" "$3" "$python" -m resnet_core.bench --model "$1" --device cuda --batch-size "$2" \
      --steps 30 --rounds 3 --json; then
    tail -n 1 "$out/bench-$1-$2.log" > "$out/bench-$1-$2.json"
  fi
}

step nvidia-smi 10 nvidia-smi || true
step cuda 20 "$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))" || true
step gpu-tests 240 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py || true
bench resnet20 128 30
bench resnet20 512 30
bench resnet56 128 30
bench resnet56 512 30
if [ -n "${RESNET_CORE_DATA:-}" ]; then
  if step train-resnet20 90 "$python" -m resnet_core.train --model resnet20 --recipe paper --iterations 3000 \
      --data "$RESNET_CORE_DATA" --device cuda --results "$out/results" --quiet; then
    records=("$out"/results/runs/*.json)
    if [ -e "${records[0]}" ]; then
      cp "${records[0]}" "$out/train-resnet20-record.json"
    else
      echo "FAILED  train-resnet20 (it wrote no run record)" >> "$summary"
      failed+=("train-resnet20-record")
    fi
  fi
else
  echo "skipped train-resnet20 (RESNET_CORE_DATA is unset)" | tee -a "$summary"
fi

echo "== summary ($out/summary.txt)"
cat "$summary"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_check: ${#failed[@]} step(s) failed: ${failed[*]}" >&2
  exit 1
fi
