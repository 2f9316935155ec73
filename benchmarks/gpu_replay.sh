#!/usr/bin/env bash
# Replays exported XLA programs on a machine with jax/jaxlib and no TensorFlow.
#
#   here (TensorFlow):  python -m benchmarks export EXPORT/check --smoke
#                       python -m benchmarks export EXPORT/full --sizes 1e7,8192x1000,256x32000,1e8
#   there (jax only):   bash benchmarks/gpu_replay.sh EXPORT RESULTS
#
# First every smoke-size program is compiled and run, as exported and inside
# the timing loop, and compared with TensorFlow's outputs (saved at export;
# timed only briefly); then the full set is timed. Each
# replay rewrites its replay.json/.md as it goes, so a run cut short keeps
# what it measured. FULL_TIMEOUT (seconds, default 420) bounds the timing.
set -u
export_dir=${1:?export directory}
results=${2:?results directory}
mkdir -p "$results/check" "$results/full"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  python3 -c "import jax, jaxlib, numpy; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'numpy', numpy.__version__, jax.devices())" 2>&1
} | tee "$results/machine.txt"
start=$(date +%s)
timeout "${CHECK_TIMEOUT:-120}" python3 -m benchmarks replay "$export_dir/check" --repeats 1 --min-sample 0.001 \
  --out "$results/check" > "$results/check.log" 2>&1
echo "check: rc=$? in $(( $(date +%s) - start )) s"; grep -E "^Outputs checked|^- [a-z0-9_.]+: " "$results/check/replay.md"
start=$(date +%s)
timeout "${FULL_TIMEOUT:-420}" python3 -m benchmarks replay "$export_dir/full" --repeats 7 --min-sample 0.02 \
  --out "$results/full" > "$results/full.log" 2>&1
echo "full: rc=$? in $(( $(date +%s) - start )) s"
sed -n '/^## Targets/,/^## Every/p' "$results/full/replay.md"
tail -3 "$results/full.log"
