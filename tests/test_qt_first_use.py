"""What a first-time user meets: saving and reopening the demo, the toolbar, themes, small figures."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, QThreadPool
from PySide6.QtWidgets import QApplication

from merger_gui.core.units import format_count, format_size
from merger_gui.demo import create_demo_donors
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import settle


@pytest.fixture
def open_window(qtbot, tmp_path):
    """A factory of main windows sharing one throwaway settings file; closes them all."""
    windows: list[MainWindow] = []

    def factory() -> MainWindow:
        win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
        win.resize(1280, 800)
        win.show()
        qtbot.waitExposed(win)
        windows.append(win)
        return win

    yield factory
    for win in windows:
        win.document.undo_stack.setClean()
        win.close()
        assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return create_demo_donors(tmp_path_factory.mktemp("demo"))


def test_a_saved_demo_reopens_with_its_donors(open_window, demo, tmp_path):
    recipe, refs = demo
    first = open_window()
    first.files.open_recipe((recipe, None, refs))
    assert settle(first, 30)
    assert first.files.write(tmp_path / "my-demo.yaml")
    second = open_window()  # a later session: same settings file
    assert second.files.open_path(tmp_path / "my-demo.yaml", ask=False)
    assert settle(second, 30)
    assert second.registry.refs == refs and not second.registry.errors
    assert second.merge_panel.blockers() == []


def test_the_toolbar_undo_keeps_its_label_and_names_the_edit_in_its_tooltip(open_window, demo):
    recipe, refs = demo
    win = open_window()
    win.files.open_recipe((recipe, None, refs))
    undo, redo = win.undo_button_actions
    assert undo.text() == "Undo" and not undo.isEnabled()
    win.document.apply_to_stage(lambda s: replace(s, dtype="float32"), "Set dtype to float32")
    assert undo.text() == "Undo" and undo.isEnabled() and undo.toolTip() == "Undo Set dtype to float32"
    undo.trigger()
    assert win.document.undo_stack.count() == 1 and win.document.undo_stack.index() == 0
    assert redo.isEnabled() and redo.toolTip() == "Redo Set dtype to float32" and not undo.isEnabled()


def test_switching_theme_recolours_the_yaml(open_window):
    win = open_window()
    win.set_theme("light")
    light = win.yaml_editor.highlighter.formats["key"].foreground().color().lightness()
    win.set_theme("dark")
    dark = win.yaml_editor.highlighter.formats["key"].foreground().color().lightness()
    assert dark > light and dark > QApplication.palette().base().color().lightness()


def test_add_donor_leaves_room_for_its_menu_arrow(open_window):
    button = open_window().donor_panel.add_button
    text = button.fontMetrics().horizontalAdvance(button.text())
    assert button.menu() is not None and button.sizeHint().width() >= text + 24


def test_the_estimate_of_a_small_model_is_readable(open_window, demo):
    recipe, refs = demo
    win = open_window()
    win.files.open_recipe((recipe, None, refs))
    assert settle(win, 30)
    win.estimate_panel.recompute()
    figures = {key: win.estimate_panel.figure(key) for key in ("params", "weights", "merge")}
    assert "(1.25 M)" in figures["params"]
    assert all("0.00 GiB" not in text for text in figures.values()) and "MiB" in figures["weights"]
    assert format_size(3 << 30) == "3.0 GiB" and format_count(19_994_362_880) == "19.99 B"


def test_saving_while_the_yaml_does_not_parse_asks_first(open_window, demo, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    recipe, refs = demo
    win = open_window()
    win.files.open_recipe((recipe, None, refs))
    editor = win.yaml_editor
    editor.editor.setPlainText(editor.text().replace("layer_range: [0, 8]", "layer_range: [0, 8", 1))
    asked = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: asked.append(a[2]) or QMessageBox.StandardButton.Cancel)
    out = tmp_path / "broken.yaml"
    assert not win.files.write(out)
    assert not out.exists() and "does not parse" in asked[0] and "line" in asked[0]
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: QMessageBox.StandardButton.Save)
    assert win.files.write(out) and "layer_range: [0, 8]" in out.read_text()  # the last valid recipe


def test_the_demo_opens_on_the_merge_tab_ready_to_merge(open_window, tmp_path, qtbot):
    win = open_window()
    win.welcome.demo_folder = tmp_path / "demo"
    with qtbot.waitSignal(win.welcome.demo_opened, timeout=60000):
        win.welcome.demo_button.click()
    assert settle(win, 30)
    assert win.tools.currentIndex() == win.merge_tab and win.pages.currentIndex() == 1
    panel = win.merge_panel
    assert panel.merge_button.isEnabled()
    assert panel.folder_edit.text() == str(tmp_path / "demo" / "merged-model")  # beside the demo models


def test_an_empty_recipe_says_why_there_is_no_estimate(open_window):
    win = open_window()
    assert win.files.new_recipe()
    assert settle(win, 10)
    win.estimate_panel.recompute()
    assert win.estimate_panel.status_label.text() == "No estimate yet: the recipe has no models."
