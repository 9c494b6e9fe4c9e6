#!/usr/bin/env bash
# Creates .venv (if absent) and installs InstructBooth with its test extra into it.
# Torch: an existing install is kept; otherwise ${TORCH_SPEC:-torch} is installed
# (CI pins the CPU build with TORCH_SPEC=torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "${TORCH_SPEC:-torch}"
"$PY" -m pip install -q -e ".[test]"
echo "installed into $VENV ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
