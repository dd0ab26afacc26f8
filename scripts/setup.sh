#!/usr/bin/env bash
# Create .venv and install ssl-bf with its pinned dependencies, plus Debian's Fashion-MNIST.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass data.root=...)" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision, ssl_bf, faiss, kornia, submitit, sklearn, hypothesis, webdataset, wids" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e ".[test]"
fi
.venv/bin/python -c "import torch, ssl_bf; print(f'ssl-bf {ssl_bf.__version__} ready (torch {torch.__version__})')"
