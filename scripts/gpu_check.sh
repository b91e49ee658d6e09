#!/usr/bin/env bash
# The one prepared device check (issue 24): on one CUDA GPU in at most 8 minutes (the part limits
# in LIMIT below add up to 480 s, which tests/test_gpu_check.py holds them to):
#   PYTHON=python3 scripts/gpu_check.sh OUTDIR [DATA]
# DATA: the dataset directory (default $RESNET_CORE_DATA); without one, the parts that train on real
# data say they were skipped. Parts, each under its own `timeout`:
#   env             nvidia-smi, torch, CUDA and the device's name
#   wheels          when optuna is not importable: every wheel in $GPU_CHECK_WHEELS (default .whl/ in
#                   the repository) installed without an index (docs/scaling.md says which to carry)
#   gpu-tests       pytest -m gpu
#   bench-resnet20  the benchmark matrix (python -m resnet_core.bench): eager, compiled, CUDA graphs,
#   bench-resnet56  fused K = 1, 3, 8 at batch 128 and 512; 2 and 4 processes for resnet20
#   train-resnet20  5,000 iterations of the paper recipe: images/s and the 64k-iteration extrapolation
#   fused-resnet56  1,000 iterations of three resnet56 seeds trained as one fused group (resnet-grid --fuse on)
#   study           a 10-trial study at the standard budget, capped by time
# OUTDIR (relative or absolute) gets three files: summary.md (a table a commit can hold),
# gpu_check.json (the raw numbers) and gpu_check.log (every part's output). A failed or timed-out part
# does not stop the others; the script then exits 1. The interpreter is $PYTHON, else the `python` on
# PATH, never a system python3. GPU_CHECK_ONLY=env,bench-resnet20 runs only the parts named;
# GPU_CHECK_COMMIT names the commit in the summary where the tree has no .git.
# GPU_CHECK_SMOKE=1 runs the CPU-safe parts at tiny sizes on synthetic data (tests/test_gpu_check.py).
set -uo pipefail

declare -A LIMIT=([env]=15 [wheels]=15 [gpu-tests]=110 [bench-resnet20]=90 [bench-resnet56]=90 [train-resnet20]=55 [fused-resnet56]=50 [study]=55)

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: scripts/gpu_check.sh OUTDIR [DATA]" >&2
  exit 2
fi
mkdir -p -- "$1" || exit 2
out="$(cd -- "$1" && pwd)"  # absolute before the cd below: a relative OUTDIR is the caller's
data="${2:-}"
cd "$(dirname "$0")/.." || exit 2
repo="$PWD"
python="${PYTHON:-$(command -v python || true)}"
if [ -z "$python" ]; then
  echo "gpu_check: no python on PATH: activate the project's environment or set PYTHON" >&2
  exit 2
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # per-part logs and results: OUTDIR keeps three files
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export RESNET_CORE_CACHE="${RESNET_CORE_CACHE:-$work/cache}"  # the dataset decoded once for every part
wheels="${GPU_CHECK_WHEELS:-$repo/.whl}"
log="$out/gpu_check.log"
: > "$log"
: > "$work/parts.tsv"

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  device=cpu
  data="${data:-synthetic:256}"
  bench=(--batch 8 --steps 1 --rounds 1 --warmup 0 --modes eager,cudagraphs,fused2)
  processes=()
  small=(--subset 64 --val-size 32 --batch-size 8)
  small_grid=(--subset 64 --val-size 32 --set batch_size=8)
  train_iterations=4
  fused_iterations=2
  study=(--trials 1 --budget quick --epochs 1 --subset 64 --val-size 32 --set depth=8 --timeout 60)
else
  device=cuda
  data="${data:-${RESNET_CORE_DATA:-}}"
  bench=(--batch 128,512 --steps 20 --rounds 3 --warmup 5 --modes eager,compiled,cudagraphs,fused1,fused3,fused8)
  processes=(--processes 2,4)
  small=()
  small_grid=()
  train_iterations=5000
  fused_iterations=1000
  study=(--trials 10 --budget standard --timeout 30)
fi

wanted() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ ",$GPU_CHECK_ONLY," == *",$1,"* ]]; }

# part NAME COMMAND...: COMMAND under LIMIT[NAME] seconds, its output on the console, in
# WORK/NAME.log and in OUTDIR/gpu_check.log; one line in WORK/parts.tsv (name, ran, exit status, seconds, limit).
part() {
  local name="$1" started=$SECONDS rc=0
  shift
  wanted "$name" || return 0
  echo "== $name (at most ${LIMIT[$name]} s): $*" | tee -a "$log"
  timeout "${LIMIT[$name]}" "$@" 2>&1 | tee "$work/$name.log" | tee -a "$log"
  rc=${PIPESTATUS[0]}
  printf '%s\tran\t%s\t%s\t%s\t\n' "$name" "$rc" "$((SECONDS - started))" "${LIMIT[$name]}" >> "$work/parts.tsv"
  echo "== $name: exit status $rc after $((SECONDS - started)) s" | tee -a "$log"
  return "$rc"
}

# skip NAME REASON: the part is not run; the summary says why.
skip() {
  wanted "$1" || return 0
  echo "== $1 skipped: $2" | tee -a "$log"
  printf '%s\tskipped\t\t\t\t%s\n' "$1" "$2" >> "$work/parts.tsv"
}

has_optuna() { "$python" -c "import optuna" > /dev/null 2>&1; }

part env "$python" scripts/gpu_check_report.py env "$device" "$work/env.json"

if has_optuna; then
  skip wheels "optuna is importable: nothing to install"
elif compgen -G "$wheels/*.whl" > /dev/null; then
  part wheels "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" \
    "$wheels"/*.whl && export PYTHONPATH="$PYTHONPATH:$work/site"
else
  skip wheels "optuna is not installed and $wheels holds no wheels"
fi

if [ "$device" = cuda ]; then
  part gpu-tests "$python" -m pytest -q -m gpu -p no:cacheprovider --timeout 90 tests/test_gpu.py
else
  skip gpu-tests "smoke mode: no GPU"
fi

part bench-resnet20 "$python" -m resnet_core.bench --model resnet20 --device "$device" "${bench[@]}" "${processes[@]}" \
  --time-limit $((${LIMIT[bench-resnet20]} - 30)) --json "$work/bench-resnet20.json"
part bench-resnet56 "$python" -m resnet_core.bench --model resnet56 --device "$device" "${bench[@]}" \
  --time-limit $((${LIMIT[bench-resnet56]} - 35)) --json "$work/bench-resnet56.json"

if [ -z "$data" ]; then
  for name in train-resnet20 fused-resnet56 study; do
    skip "$name" "no dataset: give DATA or set RESNET_CORE_DATA"
  done
else
  part train-resnet20 "$python" -m resnet_core.train --model resnet20 --recipe paper --iterations "$train_iterations" \
    --data "$data" --device "$device" --results "$work/train-resnet20" --quiet "${small[@]}"
  printf 'name = "gpu-check-fused"\nreport = "generic"\n[fixed]\ndepth = 56\n[axes]\nresidual = [true]\n' \
    > "$work/fused-resnet56.toml"  # one cell: resnet56, its 3 seeds trained as one fused group
  part fused-resnet56 "$python" ablation/run.py --grid "$work/fused-resnet56.toml" --seeds 3 --fuse on --budget paper \
    --iterations "$fused_iterations" --data "$data" --device "$device" --results "$work/fused-resnet56" --quiet \
    "${small_grid[@]}"
  if has_optuna; then
    part study "$python" studies/run.py "${study[@]}" --final-seeds 0 --data "$data" --device "$device" \
      --results "$work/study" --study-name gpu-check --quiet --no-figures
  else
    skip study "optuna is not installed here and no wheels were installed (see the wheels part)"
  fi
fi

"$python" scripts/gpu_check_report.py summary "$work" "$out" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
if [ ! -s "$out/summary.md" ]; then
  echo "gpu_check: no summary was written (see $log)" >&2
  status=1
fi
[ "$status" -eq 0 ] || echo "gpu_check: a part failed: see $out/summary.md" >&2
exit "$status"
