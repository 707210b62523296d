#!/usr/bin/env bash
# The command a GPU machine runs (the device tool; it sends the working tree with .gpu/ carried):
#   bash benchmarks/on_gpu.sh "$OUT" [MINUTES]
# It installs the carried wheels (benchmarks/gpu_carry.py made them) beside that machine's own torch, records the
# GPU, and runs benchmarks/gpu_check.py, whose files land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/on_gpu.sh OUT_DIR [MINUTES]}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/nvidia_smi.csv" 2>&1
python3 benchmarks/gpu_check.py --out "$out" --carry .gpu --minutes "${2:-7}"
