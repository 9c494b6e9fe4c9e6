#!/usr/bin/env bash
# Installs (scripts/setup.sh) and runs the embedded demo: personalize -> RL -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${VENV:-.venv}/bin/instructbooth" demo "$@"
