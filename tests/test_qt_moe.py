"""The MoE panel: an opened mergekit-moe recipe, donor picks and prompt edits as single undo steps."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, QThreadPool

from merger_gui.core.estimator import estimate_moe
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.moe_recipe import load_moe_text
from merger_gui.core.synthetic import DonorShape
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.moe_panel import MoePanel
from merger_gui.qt.settings import Settings

RECIPE = """\
base_model: {a}
gate_mode: cheap_embed
experts_per_token: 1
experts:
  - source_model: {a}
    positive_prompts: ["story"]
  - source_model: {b}
    positive_prompts: ["code", "python"]
    negative_prompts: ["poem"]
"""


@pytest.fixture
def moe_file(tmp_path, make_donor):
    shape = DonorShape(family="mistral")
    folders = {name: str(make_donor(name, shape, seed=i)) for i, name in enumerate("abc")}
    path = tmp_path / "moe.yml"
    path.write_text(RECIPE.format(**folders))
    return path, folders


def test_panel_edits_are_one_undo_step_each_and_save_as_mergekit_moe_yaml(qtbot, moe_file):
    path, folders = moe_file
    recipe = load_moe_text(path.read_text())
    donors = {name: inspect_folder(name) for name in folders.values()}
    panel = MoePanel()
    qtbot.addWidget(panel)
    panel.load(recipe, donors, path)
    moe = estimate_moe(recipe, donors[folders["a"]])
    assert f"{moe.total_params:,} total, {moe.active_params:,} active per token" in panel.parameters.text()
    assert "1 of 2 experts per token" in panel.summary.text()
    assert panel.experts[1].negative.toPlainText() == "poem"

    combo = panel.experts[0].donor
    combo.setCurrentIndex(combo.findText(folders["c"]))
    combo.activated.emit(combo.currentIndex())
    assert panel.recipe.experts[0].source_model == folders["c"] and panel.undo_stack.count() == 1

    panel.experts[1].positive.setPlainText("code\n\nrust")
    panel.experts[1].positive.editingFinished.emit()
    panel.experts[1].positive.editingFinished.emit()  # nothing changed since: no second step
    assert panel.recipe.experts[1].positive_prompts == ("code", "rust") and panel.undo_stack.count() == 2

    panel.undo_stack.undo()
    assert panel.experts[1].positive.prompts() == ("code", "python")
    panel.undo_stack.undo()
    assert panel.recipe == recipe and combo.currentText() == folders["a"]
    panel.undo_stack.redo()
    panel.save(path)
    assert load_moe_text(path.read_text()).experts[0].source_model == folders["c"]
    assert panel.undo_stack.isClean()


def test_opening_an_moe_recipe_shows_the_moe_panel(qtbot, tmp_path, moe_file):
    path, _folders = moe_file
    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    assert window.files.open_path(path, ask=False)
    assert window.pages.currentIndex() == 2 and window.moe_panel.recipe == load_moe_text(path.read_text())
    assert "active per token" in window.moe_panel.parameters.text()
    window.close()
    assert window.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0
