#!/usr/bin/env bash
# Quick start: set up, then run the main job on embedded defaults (embedded broker,
# packaged multilingual model) and print the predictions for the LLM-routing example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/shotstream demo "$@"
