#!/usr/bin/env bash
# Set up a virtual environment (first run only) and start the merger_gui designer.
#   bash packaging/launch.sh [RECIPE] [--donor NAME=REF]...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MERGER_GUI_VENV:-.venv}
if [ ! -x "$VENV/bin/merger-gui" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # CPU build of torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e .
fi
exec "$VENV/bin/merger-gui" "$@"
