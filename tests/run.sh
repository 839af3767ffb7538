#!/usr/bin/env bash
# Set up a virtual environment with everything the tests need, then run them.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MERGER_GUI_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch==2.13.0 first: on these machines it is a local CPU build, while a bare "torch" would pull a multi-GB CUDA build.
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e '.[test]'
export QT_QPA_PLATFORM=offscreen
exec "$PY" -m pytest -q "$@"
