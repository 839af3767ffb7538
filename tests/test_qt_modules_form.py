"""The designer shows a ``modules:`` recipe: the default module's slices in the stack view,
edited like any slices, saved back in the modules form."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, QThreadPool

from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.slice_edits import move_slice
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings

TEXT = textwrap.dedent("""\
    modules:
      default:  # mergekit's per-module syntax
        slices:
          - sources: [{model: a, layer_range: [0, 24]}]
          - sources: [{model: b, layer_range: [8, 32]}]
    merge_method: passthrough
    dtype: float16
""")


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    win.show_designer()
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_stack_view_shows_the_default_modules_slices(window):
    recipe = load_recipe_text(TEXT)
    window.registry.clear()
    window.document.load(recipe, None, TEXT)
    for name in ("a", "b"):
        window.registry.set_donor(name, "profile:llama-2-7b", resolve_donor("profile:llama-2-7b"))
    window.live_plan.refresh_now()
    window.stack_view.rebuild()
    assert window.stack_view.output.num_layers == 48
    assert window.stack_view.slice_bar(1) is not None
    stage = move_slice(window.document.stage, 1, 0)
    assert stage.module is not None  # edits keep the form
    saved = dump_recipe(recipe.replace_stage(0, stage), TEXT)
    assert saved.startswith("modules:\n  default:  # mergekit's per-module syntax\n")
