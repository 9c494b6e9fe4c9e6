#!/usr/bin/env bash
# Installs (scripts/setup.sh) and runs the embedded demo: personalize -> RL -> report.
# Runs in the caller's directory, so a relative --out lands where you are.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
exec "$VENV/bin/instructbooth" demo "$@"
