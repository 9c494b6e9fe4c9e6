#!/usr/bin/env bash
# Installs (scripts/setup.sh) and runs the test suite on CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
