#!/usr/bin/env bash
# Replays exported XLA programs on a machine with jax/jaxlib and no TensorFlow.
#
#   here (TensorFlow):  python -m benchmarks export EXPORT/check --smoke
#                       python -m benchmarks export EXPORT/full --sizes 1e7,8192x1000,256x32000,1e8
#                       python -m benchmarks.sweep export EXPORT/sweep        (optional)
#   there (jax only):   bash benchmarks/gpu_replay.sh EXPORT RESULTS
#
# First every smoke-size program is compiled and run, as exported and inside
# the timing loop, and compared with TensorFlow's outputs (saved at export;
# timed only briefly); then, if exported, the float32 ULP sweep runs against
# its float64 references; then the full set is timed. Each replay rewrites
# its report as it goes, so a run cut short keeps what it measured.
# CHECK_TIMEOUT, SWEEP_TIMEOUT and FULL_TIMEOUT (seconds) bound the steps.
# At most 8 files come back from the device tool: the logs stay in /tmp.
set -u
export_dir=${1:?export directory}
results=${2:?results directory}
logs=$(mktemp -d)
mkdir -p "$results/check" "$results/full"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  python3 -c "import jax, jaxlib, numpy; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'numpy', numpy.__version__, jax.devices())" 2>&1
} | tee "$results/machine.txt"
start=$(date +%s)
timeout "${CHECK_TIMEOUT:-120}" python3 -m benchmarks replay "$export_dir/check" --repeats 1 --min-sample 0.001 \
  --out "$results/check" > "$logs/check.log" 2>&1
echo "check: rc=$? in $(( $(date +%s) - start )) s"; grep -E "^Outputs checked|^- [a-z0-9_.]+: " "$results/check/replay.md"
rm -f "$results/check/replay.json"
if [ -f "$export_dir/sweep/manifest.json" ]; then
  start=$(date +%s)
  mkdir -p "$results/sweep"
  timeout "${SWEEP_TIMEOUT:-120}" python3 -m benchmarks.sweep replay "$export_dir/sweep" --out "$results/sweep" \
    > "$logs/sweep.log" 2>&1
  echo "sweep: rc=$? in $(( $(date +%s) - start )) s"; grep -E "^\| " "$results/sweep/sweep_replay.md" || tail -5 "$logs/sweep.log"
fi
start=$(date +%s)
timeout "${FULL_TIMEOUT:-420}" python3 -m benchmarks replay "$export_dir/full" --repeats 7 --min-sample 0.02 \
  --out "$results/full" > "$logs/full.log" 2>&1
echo "full: rc=$? in $(( $(date +%s) - start )) s"
sed -n '/^## Targets/,/^## Every/p' "$results/full/replay.md"
tail -3 "$logs/full.log"
