#!/usr/bin/env bash
# Set up, lint, type-check and run every test (unit, model, integration on the real
# embedded broker and packaged model). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/testdata.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
