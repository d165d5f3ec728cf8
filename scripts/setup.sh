#!/usr/bin/env bash
# Set up .venv/ at the repository root: the pinned CPU torch first (a loose torch
# requirement would pull the multi-GB CUDA build), then shotstream and its pinned set.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "shotstream needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1 | head -1 || true):" \
    "run with PYTHON=python3.11 (or newer)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24"
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU build where the
# configured index would give the CUDA one (PyPI's Linux wheels)
"${PIP[@]}" install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# constraints.txt pins the whole resolved set: fast, reproducible, no backtracking
"${PIP[@]}" install -c constraints.txt -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, faust; print("torch", torch.__version__, "| transformers", transformers.__version__, "| faust", faust.__version__)')"
