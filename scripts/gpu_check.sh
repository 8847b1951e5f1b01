#!/usr/bin/env bash
# The one prepared GPU check (issue 29), at most 8 minutes on one H100 or H200; writes one JSON:
# the smoke reproduction on the GPU against a CPU run, the Zephyr-shape memory plan in bf16, the
# plan's peaks against the GPU's allocator, and the SDPA-equals-eager tests on CUDA.
#   scripts/gpu_check.sh                                   # on the GPU machine
#   scripts/gpu_check.sh --device cpu --shape tiny --out /tmp/check.json   # the suite's CPU path
# Any option of scripts/gpu_check.py passes through (--reference, --tolerance, --parts, --card).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PY" scripts/gpu_check.py "$@"
