"""Render the README screenshots into ``docs/screenshots/``.

Run from the repository root: ``.venv/bin/python docs/make_screenshots.py``. Every shot uses
a throwaway settings file, built-in shape profiles (nothing is downloaded) and, for the merge,
small demo donors written to a temporary folder; home is a scratch folder too, so output
folders read ``~/models/…`` rather than this machine's paths.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from merger_gui.demo import create_demo_donors
from merger_gui.engine.events import TensorProgress
from merger_gui.qt.app import TOOL_TABS, app_icon, save_screenshot
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.merge_panel import default_output_name
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import settle
from merger_gui.qt.theme import apply_theme

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "resources" / "recipes"
OUT = ROOT / "docs" / "screenshots"
SIZE = (1280, 800)
SMALL = (1024, 640)  # a small laptop window: docks give way, the Problems dock offers its quick fixes
ROSE_DONORS = {"Thorns-13B": "profile:llama-2-13b", "Noromaid-13B": "profile:llama-2-13b"}
NYXENE_DONORS = {name: "profile:mistral-7b" for name in (
    "fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo",
    "berkeley-nest/Starling-LM-7B-alpha", "openaccess-ai-collective/DPOpenHermes-7B")}
# The published Nyxene recipe names its second stage's output wrongly in the third stage.
NYXENE_MISNAMED, NYXENE_STAGE_2 = "Starling-NeuralHermes-11B", "Starling-DPOHermes-11B"
ROSE_WEIGHTS = "Q4_K_M"  # the usual way to run a 20B model on a 24 GiB GPU
LAPTOP = (1366, 768)
DEEP_DONORS = {"Xwin-120B": "profile:goliath-120b", "Euryale-120B": "profile:goliath-120b"}  # 137 layers each
DEEP_RECIPE = """\
# Deep donors: interleaved slices of two 137-layer Goliath-shaped models
slices:
""" + "".join(f"  - sources: [{{model: {m}, layer_range: [{a}, {b}]}}]\n" for m, a, b in (
    ("Xwin-120B", 0, 40), ("Euryale-120B", 20, 60), ("Xwin-120B", 40, 80), ("Euryale-120B", 60, 100),
    ("Xwin-120B", 80, 120), ("Euryale-120B", 100, 137))) + """\
merge_method: passthrough
base_model: Xwin-120B
dtype: float16
"""
MERGE_SHOT_AT = (0.3, 0.8)  # grab the merge when its progress is within this fraction
MODELS = "~/models"  # where the shots' output folders are (home being the scratch folder's)
MOE_RECIPE = """\
# Three Mistral-7B fine-tunes as one 3x7B Mixtral (mergekit-moe)
base_model: mistralai/Mistral-7B-Instruct-v0.2
gate_mode: hidden
dtype: bfloat16
experts_per_token: 2
experts:
  - source_model: teknium/OpenHermes-2.5-Mistral-7B
    positive_prompts: ["chat", "assistant", "explain"]
  - source_model: WizardLMTeam/WizardMath-7B-V1.1
    positive_prompts: ["math", "solve", "equation"]
    negative_prompts: ["story"]
  - source_model: SanjiWatsuki/Kunoichi-7B
    positive_prompts: ["story", "roleplay", "character"]
"""


def new_window(scratch: Path) -> MainWindow:
    """A main window with its own throwaway settings (never the user's)."""
    ini = Path(tempfile.mkdtemp(dir=scratch)) / "settings.ini"
    return MainWindow(Settings(QSettings(str(ini), QSettings.Format.IniFormat)))


def designer_shot(scratch: Path, recipe: Path, donors: dict[str, str], tab: str, png: str,
                  stage: int | None = None, weights: str | None = None, size: tuple[int, int] = SIZE) -> None:
    window = new_window(scratch)
    if weights is not None:
        window.estimate_panel.weights_combo.setCurrentText(weights)
    if not window.files.open_path(recipe, donors, ask=False):
        raise SystemExit(f"cannot open {recipe}")
    if stage is not None:
        window.document.set_current_stage(stage)
    window.merge_panel.folder_edit.setText(f"{MODELS}/{default_output_name(window.document)}")
    window.tools.setCurrentIndex(TOOL_TABS.index(tab))
    save_screenshot(window, OUT / png, size)


def fixed_nyxene(scratch: Path) -> Path:
    """A copy of the Nyxene recipe whose last stage names the second stage correctly."""
    path = scratch / "nyxene-11b.yaml"
    text = (RECIPES / "nyxene-11b.yaml").read_text(encoding="utf-8")
    path.write_text(text.replace(NYXENE_MISNAMED, NYXENE_STAGE_2), encoding="utf-8")
    return path


def deep_donor_shot(scratch: Path, png: str) -> None:
    """Two 137-layer donors on a laptop screen: legible layers, the stacks scroll."""
    recipe = scratch / "deep-donors.yaml"
    recipe.write_text(DEEP_RECIPE, encoding="utf-8")
    designer_shot(scratch, recipe, DEEP_DONORS, "estimate", png, size=LAPTOP)


def moe_shot(scratch: Path, png: str, size: tuple[int, int] = LAPTOP) -> None:
    """A 3-expert mergekit-moe recipe on its page, its donors as Mistral-7B shape profiles."""
    from merger_gui.core.moe_recipe import load_moe_text, resolve_moe_donors

    path = scratch / "moe-3x7b.yml"
    path.write_text(MOE_RECIPE, encoding="utf-8")
    recipe = load_moe_text(MOE_RECIPE)
    donors, errors = resolve_moe_donors(recipe, {name: "profile:mistral-7b" for name in recipe.referenced_models})
    window = new_window(scratch)
    window.moe_panel.estimate_box.weights_combo.setCurrentText("Q4_K_M")
    window.moe_panel.load(recipe, donors, path, errors)
    window.moe_panel.merge_box.folder_edit.setText(f"{MODELS}/moe-3x7b")
    window.show_moe_page()
    save_screenshot(window, OUT / png, size)


def merge_shot(scratch: Path, png: str) -> None:
    """Start the demo merge from the Merge panel and grab the window mid-way."""
    recipe, refs = create_demo_donors(scratch / "demo-donors")
    window = new_window(scratch)
    window.files.open_recipe((recipe, None, refs))
    window.tools.setCurrentIndex(TOOL_TABS.index("merge"))
    window.resize(*SIZE)
    window.show()
    settle(window)
    panel = window.merge_panel
    typed = f"{MODELS}/demo-merge"
    panel.folder_edit.setText(typed)
    grabbed: list[Path] = []

    def grab(event: object) -> None:  # runs after the panel has shown this event
        if grabbed or not isinstance(event, TensorProgress) or not event.overall_count:
            return
        count = event.overall_count
        if MERGE_SHOT_AT[0] <= event.overall_index / count <= MERGE_SHOT_AT[1]:
            window.grab().save(str(OUT / png))
            grabbed.append(OUT / png)

    panel.runner.progress.connect(grab)
    if not panel.start_merge():
        raise SystemExit("the demo merge did not start: " + "; ".join(panel.blockers()))
    panel.folder_edit.setText(typed)  # as typed: the panel shows the expanded path, the scratch home's
    deadline = time.monotonic() + 120
    while (panel.runner.is_running or not grabbed) and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    if not grabbed:
        raise SystemExit("the merge gave no progress to grab")
    window.document.undo_stack.setClean()
    window.close()


def analysis_shot(scratch: Path, png: str) -> None:
    """Analyse the demo donors in a frankenmerge of them (the Analysis tab), caching in ``scratch``."""
    from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
    from merger_gui.demo import DEMO_MODELS

    os.environ["XDG_CACHE_HOME"] = str(scratch / "cache")  # never the user's cache
    _, refs = create_demo_donors(scratch / "analysis-donors")
    first, second = DEMO_MODELS
    slices = (Slice((SliceSource(first, (0, 6)),)), Slice((SliceSource(second, (3, 8)),)))
    window = new_window(scratch)
    window.files.open_recipe((Recipe((Stage("passthrough", slices=slices),)), None, refs))
    tabs = [window.tools.tabText(i) for i in range(window.tools.count())]
    window.tools.setCurrentIndex(tabs.index("Analysis"))
    window.resize(*SIZE)
    window.show()
    settle(window)
    panel = window.analysis_panel
    panel.block_spin.setValue(2)
    if not panel.start():
        raise SystemExit(f"the analysis did not start: {panel.status_label.text()}")
    deadline = time.monotonic() + 120
    while panel.runner.is_running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    if panel.result is None:
        raise SystemExit(f"the analysis gave no result: {panel.status_label.text()}")
    save_screenshot(window, OUT / png, SIZE)


def check_shot(scratch: Path, png: str) -> None:
    """Merge the demo donors, then check the merge against them (the Check tab)."""
    from merger_gui.core.inspect import inspect_folder
    from merger_gui.engine.run import run_merge

    recipe, refs = create_demo_donors(scratch / "check-donors")
    merged = Path(MODELS).expanduser() / "check-merged"  # in the scratch home
    for _ in run_merge(recipe, {name: inspect_folder(ref) for name, ref in refs.items()}, merged):
        pass
    window = new_window(scratch)
    window.files.open_recipe((recipe, None, refs))
    window.tools.setCurrentIndex(TOOL_TABS.index("check"))
    window.resize(*SIZE)
    window.show()
    settle(window)
    panel = window.check_panel
    panel.model_combo.setEditText(str(merged))
    panel.max_tokens_spin.setValue(256)
    if not panel.start_check():
        raise SystemExit("the check did not start")
    panel.model_combo.setEditText(f"{MODELS}/{merged.name}")  # as a user would type it
    deadline = time.monotonic() + 180
    while panel.runner.is_running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    if panel.evaluation is None:
        raise SystemExit("the check gave no result")
    save_screenshot(window, OUT / png, SIZE)


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setWindowIcon(app_icon())
    apply_theme(app, "light")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="merger-gui-shots-") as tmp:
        scratch = Path(tmp)
        home = scratch / "home"
        (home / MODELS.removeprefix("~/")).mkdir(parents=True)
        os.environ["HOME"] = str(home)  # no path of this machine in a shot
        designer_shot(scratch, RECIPES / "rose-20b.yaml", ROSE_DONORS, "estimate", "rose-20b.png",
                      weights=ROSE_WEIGHTS)
        designer_shot(scratch, fixed_nyxene(scratch), NYXENE_DONORS, "t-curves", "nyxene-curves.png", stage=2)
        designer_shot(scratch, RECIPES / "nyxene-11b.yaml", NYXENE_DONORS, "merge", "small-window.png", stage=2,
                      size=SMALL)  # as published: its misnamed stage and filter, with their fixes
        deep_donor_shot(scratch, "deep-donors.png")
        merge_shot(scratch, "merge.png")
        save_screenshot(new_window(scratch), OUT / "welcome.png", SIZE)
        analysis_shot(scratch, "analysis.png")
        check_shot(scratch, "check.png")
        moe_shot(scratch, "moe.png")
    for png in ("rose-20b.png", "nyxene-curves.png", "small-window.png", "deep-donors.png", "merge.png",
                "welcome.png", "analysis.png", "check.png", "moe.png"):
        print(OUT / png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
