#!/usr/bin/env bash
# Prepare a run of experiments/gpu_check.sh on the device machine (no network there): Fashion-MNIST into
# .data/ and the wheels of the pure-Python packages its image lacks into .whl/ (both git-ignored).
#
#   bash experiments/gpu_prepare.sh [DATA_DIR]      # DATA_DIR holds fashion_mnist/ (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-../shared/data}"
mkdir -p .data .whl
cp -r "$src/fashion_mnist" .data/
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
du -sh .data .whl
