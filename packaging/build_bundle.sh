#!/usr/bin/env bash
# Build the one-folder desktop bundle into packaging/dist/merger-gui/ and smoke-test it:
# it must start offscreen (render a screenshot) and plan and merge two small demo donors.
#   bash packaging/build_bundle.sh            (uses .venv, installs pyinstaller into it)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
"$PY" -m pip install -q "pyinstaller>=6"
"$PY" -m PyInstaller --noconfirm --clean --distpath dist --workpath build merger_gui.spec
BIN=dist/merger-gui/merger-gui
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" <<'PY'
import sys
from pathlib import Path
from merger_gui.core.synthetic import DonorShape, write_donor
work = Path(sys.argv[1])
write_donor(work / "donor-a", DonorShape(num_layers=6), seed=1)
write_donor(work / "donor-b", DonorShape(num_layers=6), seed=2)
(work / "recipe.yaml").write_text(
    "slices:\n"
    "  - sources: [{model: donor-a, layer_range: [0, 4]}]\n"
    "  - sources: [{model: donor-b, layer_range: [2, 6]}]\n"
    "merge_method: passthrough\n"
    "dtype: float16\n"
)
(work / "slerp.yaml").write_text(
    "slices:\n"
    "  - sources: [{model: donor-a, layer_range: [0, 6]}, {model: donor-b, layer_range: [0, 6]}]\n"
    "merge_method: slerp\n"
    "base_model: donor-a\n"
    "parameters: {t: [0.2, 0.8]}\n"
    "dtype: float16\n"
)
PY
QT_QPA_PLATFORM=offscreen "$BIN" --screenshot "$WORK/window.png" --size 1280x800
test -s "$WORK/window.png"
"$BIN" plan "$WORK/recipe.yaml"
"$BIN" merge "$WORK/recipe.yaml" "$WORK/merged"
test -f "$WORK/merged/config.json"
"$BIN" merge "$WORK/slerp.yaml" "$WORK/slerped"   # exercises torch inside the bundle
test -f "$WORK/slerped/model.safetensors"
echo "bundle OK: $(du -sh dist/merger-gui | cut -f1) in packaging/dist/merger-gui"
