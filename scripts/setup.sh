#!/usr/bin/env bash
# Create .venv (if missing) with the exact torch build this machine kind installs from
# local disk, then oqat itself and its test tools. Safe to run again: installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (about 80 s)" >&2
  pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
if ! .venv/bin/python -c "import oqat, pytest, onnxruntime, pymoo, ninja, openvino, qonnx, ml_dtypes" 2>/dev/null; then
  echo "[setup] installing oqat and its dependencies (with OpenVINO, the fast runtime for exports)" >&2
  pip install -q -e ".[test,openvino]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
.venv/bin/python -c "import torch, torchvision, oqat, pytest, openvino, qonnx" >/dev/null
# Build the CPU LSQ kernel now (about 10 s, once; torch caches it) rather than in the first run.
.venv/bin/python -c "from oqat.quant.lsq import cpu_kernel; cpu_kernel()"
# Build oqat's C runtime (a few seconds, once; cached). Without a C compiler it says so in one
# line, and everything but the runtime works.
.venv/bin/python -m oqat.runtime >/dev/null || true
# Fashion-MNIST comes from Debian where we can (no download at run time on this machine).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian's dataset-fashion-mnist" >&2
  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 || \
    echo "[setup] could not install dataset-fashion-mnist; oqat will download it" >&2
fi
