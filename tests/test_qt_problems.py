"""The Problems dock at 1024×640: errors first, sentences wrapped readably, quick fixes as one undo step."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QRect, QSettings, Qt, QThreadPool

from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.validation import Finding
from merger_gui.qt.findings_view import FINDING_ROLE
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import settle

NYXENE_DONORS = {n: "profile:mistral-7b" for n in (
    "fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo", "berkeley-nest/Starling-LM-7B-alpha",
    "openaccess-ai-collective/DPOpenHermes-7B")}
MISNAMED, STAGE_2 = "Starling-NeuralHermes-11B", "Starling-DPOHermes-11B"


@pytest.fixture
def window(qtbot, tmp_path, seed_recipe_path):
    """The Nyxene seed (its misnamed stage and filter included) in a 1024×640 window."""
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.resize(1024, 640)
    win.show()
    qtbot.waitExposed(win)
    path = seed_recipe_path("nyxene-11b.yaml")
    win.registry.clear()
    win.document.load(load_recipe_text(path.read_text()), None, path.read_text())
    for name, ref in NYXENE_DONORS.items():
        win.registry.set_donor(name, ref, resolve_donor(ref))
    win.registry.set_error(MISNAMED, MISNAMED, f"donor {MISNAMED!r} not found (not a folder, not an org/name Hub "
                                               "repo id)")
    win.show_designer()
    assert settle(win, 20)
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def rows(win: MainWindow) -> list:
    view = win.findings_view
    return [view.topLevelItem(i) for i in range(view.topLevelItemCount())]


def findings(win: MainWindow) -> list[Finding]:
    return [item.data(0, FINDING_ROLE) for item in rows(win)]


def fix_button(win: MainWindow, label: str):
    return next(b for b in win.findings_view.fix_buttons if b.property("fix_label") == label)


def test_errors_come_before_warnings(window):
    severities = [f.severity for f in findings(window)]
    assert severities[0] == "error" and severities == sorted(severities, key=lambda s: s != "error")
    assert window.findings_view.isVisible() and window.size().height() == 640


def test_messages_wrap_by_sentence_not_word_by_word(window):
    view = window.findings_view
    metrics = view.fontMetrics()
    for item in rows(window):
        rect = view.visualItemRect(item)
        text = item.text(0)
        assert rect.width() >= metrics.averageCharWidth() * 30  # room for a phrase a line
        lines = math.ceil(rect.height() / metrics.lineSpacing())
        assert lines <= max(3, len(text.split()) // 4), (text, rect)  # not one word per line
        wrapped = metrics.boundingRect(QRect(0, 0, view.text_width(0), 10_000), Qt.TextFlag.TextWordWrap, text)
        assert rect.height() >= wrapped.height()  # the row is tall enough for its wrapped text


@pytest.mark.parametrize("label, code", [
    (f"point the source at stage {STAGE_2!r}", "unknown-stage"),
    ("rename filter 'modelnorm' to 'model.norm'", "filter-no-match"),
    ("add `base_model: fblgit/una-cybertron-7b-v2`", "no-base-model"),
])
def test_each_quick_fix_is_one_undo_step_and_clears_its_finding(window, qtbot, label, code):
    stack = window.document.undo_stack
    before = [f for f in findings(window) if f.code == code]
    fix_button(window, label).click()
    assert stack.count() == 1 and stack.undoText() == f"Fix: {label}"
    window.live_plan.refresh_now()
    assert len([f for f in findings(window) if f.code == code]) == len(before) - 1
    stack.undo()
    window.live_plan.refresh_now()
    assert len([f for f in findings(window) if f.code == code]) == len(before)


def test_a_misnamed_stage_is_no_donor_to_map_until_fixed_away(window):
    panel = window.donor_panel
    assert MISNAMED not in panel.names() and MISNAMED in panel.misnamed_stages()
    assert "to map" not in panel.status.text() and "1 misnamed stage" in panel.status.text()
    fix_button(window, f"point the source at stage {STAGE_2!r}").click()
    window.live_plan.refresh_now()
    assert not panel.misnamed_stages() and MISNAMED not in window.registry.refs
    texts = [panel.tree.topLevelItem(i).text(0) for i in range(panel.tree.topLevelItemCount())]
    assert all("NeuralHermes" not in t for t in texts) and "misnamed" not in panel.status.text()
    window.document.undo_stack.undo()  # the failed lookup comes back with the name
    window.live_plan.refresh_now()
    assert MISNAMED in window.registry.errors and MISNAMED in panel.misnamed_stages()


def test_the_location_goes_under_the_message_in_a_narrow_dock(window):
    view = window.findings_view
    view.resize(view.message_min_width() + 20, 300)
    assert view.isColumnHidden(1)
    first = findings(window)[0]
    assert rows(window)[0].text(0).endswith(first.location)


def test_the_stack_labels_a_misnamed_stage_column_as_such(window):
    window.document.set_current_stage(2)
    window.live_plan.refresh_now()
    window.stack_view.rebuild()
    assert window.stack_view.columns[MISNAMED].subtitle == "stage name? — see Problems"
    fix_button(window, f"point the source at stage {STAGE_2!r}").click()
    window.live_plan.refresh_now()
    window.stack_view.rebuild()
    assert MISNAMED not in window.stack_view.columns
    assert window.stack_view.columns[STAGE_2].subtitle.endswith("stage output")
