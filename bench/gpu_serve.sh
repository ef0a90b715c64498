#!/usr/bin/env bash
# Serving throughput on one GPU: tokens/s of plain Hugging Face `generate` vs the embedded backend at 1, 32 and
# 128 concurrent requests, on a ~0.4B Llama built from its config (random weights), bf16 on cuda.
#
#   bash bench/gpu_serve.sh                    # from the repo root; ~2-5 minutes on an H100
#   OUT=/tmp/results bash bench/gpu_serve.sh   # also writes $OUT/gpu_serve.json
#
# Needs only torch (CUDA build), transformers and this repository: no package index, no downloads.
# Extra arguments go to `python -m bench.gpu_serve` (e.g. --concurrency 1,32,128,256 --new-tokens 256).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this benchmark is for a GPU machine "
                     "(CPU smoke test: python -m bench.gpu_serve --tiny --concurrency 1,4 --new-tokens 8)")
PY
# Stay well inside a 10-minute slot even if something hangs.
exec timeout --signal=INT 540 "$PYTHON" -m bench.gpu_serve --dtype bfloat16 --concurrency 1,32,128 "$@"
