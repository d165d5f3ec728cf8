#!/usr/bin/env bash
# Set up .venv/ at the repository root: the pinned CPU torch first (a loose torch
# requirement would pull the multi-GB CUDA build), then shotstream and its pinned set.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24"
"${PIP[@]}" install "torch==2.13.0"
# constraints.txt pins the whole resolved set: fast, reproducible, no backtracking
"${PIP[@]}" install -c constraints.txt -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, faust; print("torch", torch.__version__, "| transformers", transformers.__version__, "| faust", faust.__version__)')"
