"""Everyday habits: the way back to the start page, Ctrl+Y, Ctrl+Z in the YAML tab, File › New,
editing during a merge, a total that does not fit, user folders, unreadable donors."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt, QThreadPool
from PySide6.QtGui import QKeySequence
from PySide6.QtTest import QTest

from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.merge_runner import MergeRunner
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import settle
from merger_gui.qt.user_folders import is_inside_package

DEEP = Recipe((Stage("passthrough", slices=(Slice((SliceSource("goliath", (0, 70)),)),
                                            Slice((SliceSource("goliath", (60, 137)),)))),))


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.resize(1024, 640)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def open_deep(win: MainWindow) -> None:
    """A 137-layer donor (Goliath-120B's shape) in a two-slice passthrough."""
    win.registry.clear()
    win.document.load(DEEP)
    win.registry.set_donor("goliath", "profile:goliath-120b", resolve_donor("profile:goliath-120b"))
    win.show_designer()
    assert settle(win, 20)


def menu_action(win: MainWindow, menu: str, text: str):
    bar = next(a.menu() for a in win.menuBar().actions() if a.text().replace("&", "") == menu)
    actions = list(bar.actions()) + [a for m in bar.actions() if m.menu() for a in m.menu().actions()]
    return next(a for a in actions if a.text().replace("&", "").startswith(text))


def edit_dtype(win: MainWindow) -> None:
    win.document.apply_to_stage(lambda s: replace(s, dtype="float32"), "Set dtype")


def test_help_welcome_goes_back_to_the_start_page_and_back(window, qtbot):
    open_deep(window)
    menu_action(window, "Help", "Welcome").trigger()
    assert window.pages.currentIndex() == 0 and not window.donor_dock.isVisible()
    assert window.welcome.back_button.isVisible()
    window.welcome.back_button.click()
    assert window.pages.currentIndex() == 1 and window.document.recipe == DEEP


def test_new_from_example_opens_a_seed_recipe(window):
    menu_action(window, "File", "Rose-20B").trigger()
    assert window.pages.currentIndex() == 1 and window.document.recipe.stages
    assert set(window.registry.refs) | set(window.inspector.pending)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS redoes with Cmd+Shift+Z only")
def test_ctrl_y_redoes(window):
    open_deep(window)
    assert QKeySequence("Ctrl+Y") in window.redo_action.shortcuts()
    edit_dtype(window)
    window.document.undo_stack.undo()
    window.yaml_editor.editor.setFocus()
    QTest.keyClick(window.yaml_editor.editor, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert window.document.stage.dtype == "float32"


def test_ctrl_z_in_the_yaml_editor_undoes_the_recipe_edit_unless_typing_is_pending(window):
    open_deep(window)
    edit_dtype(window)
    editor = window.yaml_editor
    QTest.keyClick(editor.editor, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.document.stage.dtype is None and window.document.undo_stack.index() == 0
    QTest.keyClicks(editor.editor, "# a note")  # the editor's own change, not applied yet
    assert editor.has_pending_change
    QTest.keyClick(editor.editor, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.document.undo_stack.index() == 0 and window.document.undo_stack.canRedo()  # the recipe stays


def test_file_new_clears_the_last_merge_result_and_log(window):
    panel = window.merge_panel
    panel.log.appendPlainText("merged 12 tensors")
    panel.result_label.setText("The merged model is in /somewhere")
    assert window.files.new_recipe()
    assert panel.log.toPlainText() == "" and panel.result_label.text() == "" and panel.output_path is None


def test_editing_during_a_merge_says_the_merge_uses_the_recipe_as_it_started(window, monkeypatch):
    open_deep(window)
    panel = window.merge_panel
    monkeypatch.setattr(MergeRunner, "is_running", property(lambda self: True))
    panel._started_recipe = window.document.recipe  # as start_merge records it
    panel.update_state()
    assert not panel.running_note.isVisibleTo(panel)
    edit_dtype(window)
    assert panel.running_note.isVisibleTo(panel) and "as it was when it started" in panel.running_note.text()


def test_the_estimate_says_plainly_when_the_total_does_not_fit(window):
    open_deep(window)
    estimate = window.estimate_panel
    estimate.gpu_spin.setValue(24.0)
    estimate.recompute()
    assert estimate.fit_label.text().startswith("Does not fit the 24.0 GiB GPU")
    assert "#dc2626" in estimate.fit_label.styleSheet() and "#dc2626" in estimate.figure_labels["total"].styleSheet()
    estimate.gpu_spin.setValue(2048.0)
    estimate.recompute()
    assert estimate.fit_label.text().startswith("Fits the 2048.0 GiB GPU")
    assert estimate.figure_labels["total"].styleSheet() == ""


def test_save_as_and_the_output_folder_start_outside_the_installed_app(window, seed_recipe_path):
    assert window.files.open_path(seed_recipe_path("rose-20b.yaml"), {}, ask=False)
    assert is_inside_package(window.document.path)
    suggestion = window.files.save_path_suggestion()
    assert suggestion.name == "rose-20b.yaml" and not is_inside_package(suggestion)
    assert not is_inside_package(window.merge_panel.output_folder())


def test_a_corrupt_donor_is_unreadable_not_missing(window, make_donor, qtbot):
    folder = make_donor("broken")
    for shard in folder.glob("*.safetensors"):
        shard.write_bytes(shard.read_bytes()[:64])  # a header that promises more than the file has
    window.document.load(Recipe((Stage("passthrough", slices=(Slice((SliceSource("broken", (0, 2)),)),)),)))
    window.donor_panel.add_folder(folder, "broken")
    assert window.inspector.wait(5000) and settle(window, 20)
    item = window.donor_panel.tree.topLevelItem(0)
    assert item.text(1) == "unreadable"
    assert item.child(0).text(0).startswith("unreadable: ") and "safetensors" in item.child(0).text(0)
