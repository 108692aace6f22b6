#!/usr/bin/env bash
# One prepared GPU check (under 5 minutes on an accelerator machine): installs the package,
# then prints images/s of the DALI pipeline alone, the model alone and end-to-end training.
# Run from the repository root with ../shared/data/imagenette-mini beside it, or pass DATA.
set -euo pipefail
DATA=${1:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/imagenette-mini}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m venv /tmp/alexnet-venv
/tmp/alexnet-venv/bin/pip install -q . faiss-cpu
export PYTHONUNBUFFERED=1
timeout 120 /tmp/alexnet-venv/bin/python bench/pipeline.py --data "$DATA/train" --seconds 10 || true
timeout 150 /tmp/alexnet-venv/bin/python bench/train.py --data "$DATA" --batch 128 --images 1200
