#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes on a GPU machine): the CUDA tests, the model alone
# (faces/s by batch size), the server ramp for crops with --processes N vs --processes N
# --inference-worker, and full frames with detection batched on the GPU. Every part writes
# its result file under OUT/<machine>/ (default OUT bench/results/gpu_check/), with summary.txt listing each
# part's command, exit code and seconds.
#
#   bench/gpu_check.sh                 # auto: the GPU when torch sees one, else the CPU
#   bench/gpu_check.sh --cpu --quick   # the CPU-capable parts, tiny durations (tests/test_bench.py)
#
# Needs the test install (README, "Run the tests": torch, the [gpu] and [test] extras) and
# `npm ci` in web/ (BlazeFace's weights). Each part is bounded by `timeout` (a ramp cut short
# still leaves its log); one failing does not stop the others, and the script exits 1 when
# any did.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=auto quick=0 out=bench/results/gpu_check processes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) mode=cpu ;;
    --gpu) mode=cuda ;;
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    --processes) processes="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-python}
if [ "$mode" = auto ]; then
  if "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    mode=cuda
  else
    mode=cpu
  fi
fi
cores=$(nproc)
# Front-ends: one per two cores, up to 8 (the load generator needs cores too).
[ -n "$processes" ] || processes=$(( cores / 2 > 8 ? 8 : (cores / 2 < 2 ? 2 : cores / 2) ))
if [ "$quick" = 1 ]; then
  ramp=(--step-seconds 0.5 --pause 0.1 --start-clients 1 --max-clients 2 --fps 10
        --warmup-seconds 0.3)
  model=(--max-batch 4 --modes mirror --repeats 1 --warmup 1 --min-seconds 0.01)
  limits=(300 300 300 300)
else
  ramp=(--step-seconds 3 --pause 0.5 --start-clients 8 --max-clients 512 --warmup-seconds 2)
  model=(--max-batch 256 --modes mirror,ten --repeats 5)
  limits=(80 70 150 150)  # seconds per part: 7 min 30 s at most, all four together
fi
mkdir -p "$out"
summary="$out/summary.txt"
{
  echo "gpu_check $(date -u +%FT%TZ) mode=$mode quick=$quick processes=$processes cores=$cores"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} > "$summary" 2>&1
failed=0
part() {  # part LIMIT NAME COMMAND...: run one part within LIMIT s, log it, note its exit code
  local limit=$1 name=$2; shift 2
  local start=$SECONDS
  echo "== $name (at most $limit s): $*" | tee -a "$summary"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "   exit $code, $(( SECONDS - start )) s (log: $out/$name.log)" | tee -a "$summary"
  [ "$code" = 0 ] || failed=1
}
part "${limits[0]}" cuda_tests "$python" -m pytest -q -rs tests/test_cuda.py
part "${limits[1]}" model "$python" -m bench.model batches --device "$mode" --out-dir "$out" "${model[@]}"
part "${limits[2]}" crops_ramp "$python" -m bench.server ramp --out-dir "$out" --logs "$out/logs" \
  --server-arg=--device="$mode" "${ramp[@]}" \
  --variant "$processes processes=--processes $processes" \
  --variant "$processes processes + inference worker=--processes $processes --inference-worker"
part "${limits[3]}" frames_ramp "$python" -m bench.server ramp --out-dir "$out" --logs "$out/logs" \
  --kind frames --server-arg=--device="$mode" "${ramp[@]}" \
  --variant "1 process, detection batched on the $mode=--detect-batch" \
  --variant "$processes processes + inference worker=--processes $processes --inference-worker"
echo "done: $out (failed parts: $failed)" | tee -a "$summary"
exit "$failed"
