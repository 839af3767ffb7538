"""Quitting the window with unsaved changes: Discard closes it, and deleting it raises nothing."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pytestqt")

import shiboken6
from PySide6.QtCore import QSettings, QThreadPool
from PySide6.QtWidgets import QMessageBox

from merger_gui.core.recipe import Recipe, Stage
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings


@pytest.fixture(autouse=True)
def temporary_settings_names(qapp):
    """Never touch the user's settings file, whatever a widget does."""
    org, name = qapp.organizationName(), qapp.applicationName()
    qapp.setOrganizationName("merger-gui-tests")
    qapp.setApplicationName(f"quit-{time.monotonic_ns()}")
    yield
    qapp.setOrganizationName(org)
    qapp.setApplicationName(name)


@pytest.fixture
def modified_window(qtbot, tmp_path) -> MainWindow:
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.show()
    qtbot.waitExposed(win)
    win.document.apply(Recipe((Stage("slerp", slices=()),)), "Set method")
    assert win.document.is_modified and win.isWindowModified()
    return win


def _answer(monkeypatch, button: QMessageBox.StandardButton) -> list[str]:
    asked: list[str] = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        return button

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


def test_discard_closes_and_deleting_the_window_raises_nothing(modified_window, monkeypatch, qtbot):
    asked = _answer(monkeypatch, QMessageBox.StandardButton.Discard)
    win = modified_window
    with qtbot.captureExceptions() as exceptions:
        assert win.close()
        assert win.inspector.wait(5000)
        shiboken6.delete(win)  # what leaving app.main does to the window after the event loop ends
    assert [str(e[1]) for e in exceptions] == []
    assert asked == ["Save the changes to the new recipe?"]
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_cancel_keeps_the_window_and_its_changes(modified_window, monkeypatch):
    _answer(monkeypatch, QMessageBox.StandardButton.Cancel)
    assert not modified_window.close()
    assert modified_window.isVisible() and modified_window.document.is_modified
    modified_window.document.undo_stack.setClean()
    assert modified_window.close()
    assert modified_window.inspector.wait(5000)
