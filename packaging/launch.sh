#!/usr/bin/env bash
# Set up a virtual environment (first run only) and start the merger_gui designer.
#   bash packaging/launch.sh [RECIPE] [--donor NAME=REF]...
# Paths in the arguments are taken relative to the directory you run it from.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MERGER_GUI_VENV:-.venv}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
# The window (not the CLI) needs X11 libraries that minimal Linux installs lack; say which before set-up.
case ${1:-} in validate|plan|estimate|merge|evaluate|sweep|export-gguf|analyze|-h|--help|--screenshot) ;; *)
    LDCONFIG=$(PATH=$PATH:/sbin:/usr/sbin command -v ldconfig || true)
    if [ "$(uname -s)" = Linux ] && [ -n "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}${QT_QPA_PLATFORM:-}" ] \
        && [ -n "$LDCONFIG" ] && ! "$LDCONFIG" -p | grep 'libxcb-cursor\.so\.0' >/dev/null; then
        echo "launch.sh: the window needs the system library libxcb-cursor (Debian/Ubuntu: sudo apt install" \
             "libxcb-cursor0; Fedora: sudo dnf install xcb-util-cursor); the CLI works without it:" \
             "bash packaging/launch.sh --help" >&2
        exit 1
    fi ;;
esac
if [ ! -x "$VENV/bin/merger-gui" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned, so that pip does not pick another release for the app's "torch>=2.1".
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e "$ROOT"
fi
exec "$VENV/bin/merger-gui" "$@"
