#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU paths checked and measured in one go on an NVIDIA GPU host, one
# table at the end (bench/gpu_check.py). The measurements take at most 7.5 minutes (each step
# has its own time limit); installing first adds the downloads.
#
# Steps: the gpu-marked tests (pytest -m gpu); bench/pipeline.py --device gpu (DALI with
# mixed decoding, and the patch cache, against torchvision on the GPU); bench/train.py
# --require-gpu (the model alone and end to end, bf16, channels-last, and from them one
# ImageNet epoch on 1 and 8 GPUs); fc7 extraction; faiss-gpu flat search against the CPU
# index. Each stops loudly if what should run on the GPU runs on the CPU.
set -uo pipefail

usage() {
    cat <<EOF
usage: bench/gpu_check.sh [--python PATH | --no-install] [--venv DIR] [--data DIR] [--out DIR]

  (default)       make a venv (--venv, default /tmp/alexnet-gpu-venv) and install the
                  repository into it (pip install '.[dev]'), with \$FAISS_GPU (default
                  faiss-gpu, CUDA 12 wheels; or faiss-gpu-cu12) in place of faiss-cpu
  --python PATH   use this prepared environment's python instead; nothing is installed
  --no-install    use the python on PATH as it is
  --data DIR      imagenette-mini's layout, DIR/train/<class>/<image> (default:
                  shared/data/imagenette-mini beside the repository)
  --out DIR       keep each step's log and figures here (default: a new folder in /tmp)

Exit status: 0 when every step passed; 2 bad arguments; 3 no NVIDIA GPU; 4 the environment
lacks something (one line says what); 1 a step failed (the table says which).
EOF
}

die() {
    echo "gpu_check: $1" >&2
    exit "${2:-2}"
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=$(cd "$ROOT/.." && pwd)/shared/data/imagenette-mini
VENV=/tmp/alexnet-gpu-venv
PY=""
INSTALL=1
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --python | --venv | --data | --out)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
            case "$1" in
                --python) PY=$2; INSTALL=0 ;;
                --venv) VENV=$2 ;;
                --data) DATA=$2 ;;
                --out) OUT=$2 ;;
            esac
            shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
absolute() { # PATH: the same path from / (the steps run in the repository's root)
    case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac
}
if [ -n "$PY" ]; then
    [ -f "$PY" ] && [ -x "$PY" ] || die "--python $PY is not an executable python"
    PY=$(absolute "$PY")
fi
[ -d "$DATA/train" ] || die "no training images in $DATA/train: pass --data DIR"
DATA=$(absolute "$DATA")
VENV=$(absolute "$VENV")

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    die "no NVIDIA GPU on this host (nvidia-smi lists none): run this on a GPU host" 3
fi

OUT=$(absolute "${OUT:-$(mktemp -d /tmp/alexnet-gpu-check.XXXXXX)}")
mkdir -p "$OUT" || die "cannot create $OUT"
: >"$OUT/steps.txt"
cd "$ROOT" || die "cannot enter $ROOT"

if [ "$INSTALL" = 1 ]; then
    echo "installing into $VENV (log: $OUT/install.log) ..."
    {
        python3 -m venv "$VENV" &&
            "$VENV/bin/pip" install -q '.[dev]' &&
            "$VENV/bin/pip" uninstall -q -y faiss-cpu &&
            "$VENV/bin/pip" install -q "${FAISS_GPU:-faiss-gpu}"
    } >"$OUT/install.log" 2>&1 ||
        die "installing into $VENV failed (no network? see $OUT/install.log): prepare an environment and pass --python PATH" 4
    PY=$VENV/bin/python
elif [ -z "$PY" ]; then
    PY=$(command -v python3 || command -v python) || die "no python on PATH: pass --python PATH" 4
fi

"$PY" bench/gpu_check.py env >"$OUT/env.txt" 2>&1 || die "$(tail -n 1 "$OUT/env.txt") (python: $PY)" 4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/env.txt" 2>&1
export PYTHONUNBUFFERED=1

step() { # NAME LIMIT COMMAND...: run one step under a time limit, its output in OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    echo "$name (at most $limit s) ..."
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name $rc $(($(date +%s) - start)) $limit" >>"$OUT/steps.txt"
}

step tests 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
step pipeline 110 "$PY" bench/pipeline.py --device gpu --data "$DATA/train" --sets imagenet-sized \
    --seconds 3 --rounds 2 --threads 8 --json "$OUT/pipeline.json"
step train 120 "$PY" bench/train.py --data "$DATA" --batch 128 --images 1024 --require-gpu \
    --json "$OUT/train.json"
step fc7 40 "$PY" bench/gpu_check.py fc7 --json "$OUT/fc7.json"
step faiss 60 "$PY" bench/gpu_check.py faiss --json "$OUT/faiss.json"
echo
"$PY" bench/gpu_check.py table "$OUT"
