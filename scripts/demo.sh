#!/usr/bin/env bash
# The main job from nothing: set up the environment, run the whole OQAT pipeline on
# Fashion-MNIST (4-bit supernet -> 3 -> 2 bits by inheritance -> search -> evaluation ->
# ONNX export -> report), then say where the results are. Extra arguments are config
# overrides, e.g. `bash scripts/demo.sh run.dir=runs/other`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/oqat run configs/fashion-mnist.yaml "$@"
