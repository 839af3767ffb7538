"""Small windows: at 1024×640 every panel fits and docks give way; at 1366×768 only the stacks scroll."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, QThreadPool
from PySide6.QtWidgets import QComboBox, QScrollArea

from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.qt.eliding_combo import ElidingComboBox
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import settle

LONG_NAME = "openaccess-ai-collective/DPOpenHermes-7B-goliath-style"
DEEP = Recipe((Stage("passthrough", slices=(Slice((SliceSource(LONG_NAME, (0, 137)),)),
                                            Slice((SliceSource("llama3-70b", (0, 80)),))), base_model=LONG_NAME),))


@pytest.fixture
def window(qtbot, tmp_path):
    """A 137-layer and an 80-layer donor, long names, in a window of the size asked for."""
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))

    def show(width: int, height: int) -> MainWindow:
        win.resize(width, height)
        win.show()
        qtbot.waitExposed(win)
        win.registry.clear()
        win.document.load(DEEP)
        win.registry.set_donor(LONG_NAME, "profile:goliath-120b", resolve_donor("profile:goliath-120b"))
        win.registry.set_donor("llama3-70b", "profile:llama-3-70b", resolve_donor("profile:llama-3-70b"))
        win.show_designer()
        assert settle(win, 20)
        return win

    yield show
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_the_window_really_is_1024_by_640_and_the_donors_become_a_tab(window):
    win = window(1024, 640)
    assert (win.width(), win.height()) == (1024, 640)  # no panel's minimum forces it taller
    assert win.donor_dock in win.tabifiedDockWidgets(win.tools_dock)
    assert win.stack_view.width() >= 500  # the stacks keep the room the donor list gave up
    win.resize(1366, 768)
    assert win.donor_dock not in win.tabifiedDockWidgets(win.tools_dock)


def test_combos_elide_rather_than_clip(window):
    win = window(1024, 640)
    combos = [c for c in win.findChildren(QComboBox) if c.isVisible()]
    assert combos
    for combo in combos:
        assert isinstance(combo, ElidingComboBox) or combo.width() >= combo.sizeHint().width(), combo.currentText()
    base = win.stage_settings.base_combo
    assert base.currentText() == LONG_NAME and base.width() < base.fontMetrics().horizontalAdvance(LONG_NAME)
    assert "…" in base.shown_text()


def test_at_1366_by_768_the_recipe_tools_need_no_scrolling(window):
    win = window(1366, 768)
    room = win.tools.currentWidget().size()  # every tab's page gets the room the shown one has
    for tab in range(win.tools.count()):
        page = win.tools.widget(tab)
        content = page.widget() if isinstance(page, QScrollArea) else page
        hint = content.minimumSizeHint()
        assert room.width() >= hint.width() and room.height() >= hint.height(), (win.tools.tabText(tab), hint)


def test_at_1366_by_768_no_tab_scrolls_once_shown(window, qtbot):
    """The scroll area sizes a page by its height for the width, which counts its plots' size hints:
    a plot asking for pyqtgraph's 480 px pushed the Estimate and Analysis tabs out of the window."""
    win = window(1366, 768)
    for tab in range(win.tools.count()):
        win.tools.setCurrentIndex(tab)
        area = win.tools.currentWidget()
        if not isinstance(area, QScrollArea):
            continue
        qtbot.waitUntil(lambda a=area: a.widget().isVisible(), timeout=2000)
        assert settle(win, 10)
        assert area.verticalScrollBar().maximum() == 0, (win.tools.tabText(tab), area.widget().height())


def test_the_donor_list_fits_beside_the_stacks_at_1366(window):
    win = window(1366, 768)
    assert win.donor_dock.isVisible() and win.donor_panel.width() >= win.donor_panel.minimumSizeHint().width()
    tree = win.donor_panel.tree
    assert tree.verticalScrollBar().maximum() == 0


def test_the_merge_tab_fits_the_dock_at_1024_by_640_without_scrolling_sideways(window, qtbot):
    win = window(1024, 640)
    win.tools.setCurrentIndex(win.merge_tab)
    area = win.tools.currentWidget()
    assert isinstance(area, QScrollArea)
    qtbot.waitUntil(lambda: area.widget().isVisible(), timeout=2000)
    assert area.widget().minimumSizeHint().width() <= area.viewport().width()
    assert not area.horizontalScrollBar().isVisible()


def test_the_check_tab_keeps_its_rows_together_in_a_tall_window(window, qtbot):
    win = window(1366, 768)
    win.tools.setCurrentIndex(win.tools.indexOf(win.check_panel.parentWidget().parentWidget()))
    qtbot.waitUntil(lambda: win.check_panel.isVisible(), timeout=2000)
    assert settle(win, 10)
    form = win.check_panel.layout().itemAt(0).layout()  # spare height goes below the results, not between rows
    assert form.geometry().height() <= form.sizeHint().height() + 4


@pytest.mark.parametrize("size", [(1024, 640), (1366, 768)])
def test_the_t_curves_plot_and_grid_share_the_dock_without_overlapping(window, qtbot, size):
    from merger_gui.core.recipe import FilterRule, Parameters

    win = window(*size)
    rules = tuple(FilterRule(0.5, name) for name in ("lm_head", "embed_tokens", "self_attn", "mlp", "layernorm",
                                                     "modelnorm")) + (FilterRule(0.5),)
    slices = (Slice((SliceSource("a", (0, 32)), SliceSource("b", (0, 32)))),)
    win.registry.clear()
    win.document.load(Recipe((Stage("slerp", slices=slices, base_model="a", parameters=Parameters({"t": rules})),)))
    for name in ("a", "b"):
        win.registry.set_donor(name, "profile:mistral-7b", resolve_donor("profile:mistral-7b"))
    win.live_plan.refresh_now()
    editor = win.curve_editor
    win.tools.setCurrentIndex(win.tools.indexOf(editor))
    qtbot.waitUntil(editor.isVisible, timeout=2000)
    assert settle(win, 10)
    plot, grid = editor.plot_widget.geometry(), editor.grid.geometry()
    assert plot.bottom() < grid.top() and grid.bottom() <= editor.splitter.height()
    table = editor.grid.table
    if size == (1366, 768):  # a laptop: every rule's row in sight, the plot still the larger part
        assert table.verticalHeader().length() <= table.viewport().height()
        assert plot.height() >= 0.4 * (plot.height() + grid.height())
        assert editor.scroll_area.verticalScrollBar().maximum() == 0  # the editor needs no scrolling
