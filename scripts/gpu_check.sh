#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): bnn's epochs in float32 and mixed_float16, the
# step against Larq and full precision at batch 256, the input pipeline against the
# step; at most 8 minutes. Usage: scripts/gpu_check.sh [OUT_DIR] [--data-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
shift || true
export PYTHONUNBUFFERED=1
timeout 480 python scripts/gpu_check.py --out "$out" "$@"
