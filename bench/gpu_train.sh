#!/usr/bin/env bash
# bash bench/gpu_train.sh        — on one GPU, from the repo root, in under 10 minutes.
# The GPU image has torch (CUDA) and transformers but no package index: DeepSpeed and its two
# pure-Python dependencies travel as wheels in bench/wheels/ (build them with:
#   pip wheel --no-deps -w bench/wheels deepspeed==0.19.8 hjson pydantic pydantic-core annotated-types typing-inspection
# for the GPU machine's Python). Results go to $OUT/gpu_train.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import deepspeed" 2>/dev/null; then
  python -m pip install --no-index --no-deps -q bench/wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
DS_BUILD_OPS=0 python bench/gpu_train.py --preset 0.4b --seq 2048 --micro-batch 8 --steps 20 "$@"
