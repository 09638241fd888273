#!/usr/bin/env bash
# The GPU numbers in one command, within 8 minutes on one H100/H200: writes docs/bench_gpu.json.
#
#   bash experiments/gpu_check.sh [OUT_JSON] [--tiny]
#
# Fashion-MNIST is read from $FEDBAT_DATA_DIR, else .data/ in the repo, else ../shared/data. The device
# machine has jax, flax, optax, chex and numpy but no network: `bash experiments/gpu_prepare.sh` (run
# here first) copies the data to .data/ and downloads the pure-Python packages it lacks into .whl/ (both
# git-ignored); carry both. They are installed here into /tmp/site if present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"  # the interpreter with jax (the tests pass their own)
out="${1:-docs/bench_gpu.json}"
shift || true
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data="${FEDBAT_DATA_DIR:-}"
if [ -z "$data" ]; then
  if [ -d .data/fashion_mnist ]; then data=.data; elif [ -d ../shared/data/fashion_mnist ]; then data=../shared/data; fi
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PYTHON" experiments/gpu_check.py --data-dir "$data" --out "$out" "$@"
