#!/usr/bin/env bash
# Set up a virtual environment (first run only) and start the merger_gui designer.
#   bash packaging/launch.sh [RECIPE] [--donor NAME=REF]...
# Paths in the arguments are taken relative to the directory you run it from.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MERGER_GUI_VENV:-.venv}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
if [ ! -x "$VENV/bin/merger-gui" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned, so that pip does not pick another release for the app's "torch>=2.1".
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e "$ROOT"
fi
exec "$VENV/bin/merger-gui" "$@"
