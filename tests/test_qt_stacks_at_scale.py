"""The stacks at real scale: deep donors in laptop windows, a layout that holds still, precise edits."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, QSettings, Qt, QThreadPool
from PySide6.QtGui import QFontMetrics
from PySide6.QtTest import QTest

from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.live_plan import LivePlan
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.slice_items import (
    CELL_LABEL_W, LEGIBLE_FONT_PX, header_fonts, label_font, subtitle_line, title_lines,
)
from merger_gui.qt.stack_view import LEGIBLE_CELL_H, ZOOM_STEP, StackView

GOLIATH, LLAMA_70B, LLAMA_13B = "profile:goliath-120b", "profile:llama-3-70b", "profile:llama-2-13b"
SIZES = [(1024, 640), (1366, 768)]


@pytest.fixture(params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def window(request, qtbot, tmp_path):
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.resize(*request.param)
    win.show()
    qtbot.waitExposed(win)
    win.show_designer()
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def load(win: MainWindow, recipe: Recipe, donors: dict[str, str]) -> None:
    win.registry.clear()
    win.document.load(recipe)
    for name, ref in donors.items():
        win.registry.set_donor(name, ref, resolve_donor(ref))
    win.live_plan.refresh_now()


def passthrough(*ranges: tuple[str, int, int]) -> Recipe:
    return Recipe((Stage("passthrough", slices=tuple(Slice((SliceSource(m, (s, e)),)) for m, s, e in ranges)),))


def ranges(win: MainWindow) -> list[tuple[str, tuple[int, int]]]:
    return [(s.sources[0].model, s.sources[0].layer_range) for s in win.document.stage.slices]


def cell_point(win: MainWindow, model: str, layer: float) -> QPoint:
    view = win.stack_view
    return view.mapFromScene(QPointF(view.columns[model].x() + CELL_LABEL_W / 2, view.geometry_.y(layer)))


def column_layout(win: MainWindow) -> list[tuple[str, float, float]]:
    return [(name, column.x(), column.width) for name, column in win.stack_view.columns.items()]


@pytest.mark.parametrize("donor", [GOLIATH, LLAMA_70B])
def test_deep_donors_are_drawn_at_a_legible_scale_and_scroll(window, donor):
    load(window, passthrough(("A", 0, 20)), {"A": donor, "B": donor})
    view = window.stack_view
    layers = view.columns["A"].num_layers
    assert layers in (137, 80)
    assert view.geometry_.cell_h >= LEGIBLE_CELL_H
    assert label_font(view.geometry_.cell_h).pixelSize() >= LEGIBLE_FONT_PX
    assert view.transform().isIdentity()  # nothing is shrunk to fit: the stacks scroll instead
    assert view.verticalScrollBar().maximum() > 0
    assert f"{layers} layers" in view.columns["A"].subtitle


def test_a_drag_from_the_first_to_the_last_layer_of_137_scrolls_and_takes_all(qtbot, window):
    load(window, passthrough(), {"A": GOLIATH, "B": GOLIATH})
    view, viewport = window.stack_view, window.stack_view.viewport()
    assert view.verticalScrollBar().value() == 0
    press = cell_point(window, "A", 0.5)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, press)
    edge = QPoint(press.x(), viewport.height() - 4)
    for k in range(1, 7):
        QTest.mouseMove(viewport, press + (edge - press) * (k / 6))
    scroll = view.verticalScrollBar()
    qtbot.waitUntil(lambda: scroll.value() == scroll.maximum(), timeout=10000)  # autoscroll at the edge
    last = cell_point(window, "A", 136.5)
    assert viewport.rect().contains(last)
    QTest.mouseMove(viewport, last)
    assert view.tip.isVisible() and view.tip.text == "layers 0–136 (137 layers)"
    assert view.output.num_layers == 137  # the output follows the drag
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, last)
    assert ranges(window) == [("A", (0, 137))]
    assert window.document.undo_stack.count() == 1 and not view.tip.isVisible()


def test_scale_and_column_order_hold_still_across_edits(window):
    slerp = Recipe((Stage("slerp", slices=(), base_model="A"),))
    load(window, slerp, {"A": LLAMA_70B, "B": LLAMA_70B})
    view = window.stack_view
    scale, layout = view.geometry_.cell_h, column_layout(window)
    assert [name for name, _, _ in layout] == ["A", "B"]
    press, target = cell_point(window, "B", 2.5), cell_point(window, "B", 9.5)
    QTest.mousePress(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, press)
    for k in range(1, 5):
        QTest.mouseMove(view.viewport(), press + (target - press) * (k / 4))
    QTest.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, target)
    assert window.document.stage.slices[0].sources[0].model == "B"  # B is the slice's first source…
    window.live_plan.refresh_now()
    assert column_layout(window) == layout and view.geometry_.cell_h == scale  # …and stays on the right
    window.document.apply_to_stage(lambda s: Stage("slerp", slices=s.slices * 4, base_model="A"), "longer output")
    window.live_plan.refresh_now()
    assert view.output.num_layers == 4 * 8 and view.geometry_.cell_h == scale
    assert column_layout(window) == layout


def test_zoom_changes_the_scale_and_edits_do_not(qtbot, window):
    load(window, passthrough(("A", 0, 40), ("A", 20, 80)), {"A": LLAMA_70B})
    view = window.stack_view
    scale = view.geometry_.cell_h
    view.zoom_in.trigger()
    assert view.geometry_.cell_h == pytest.approx(scale * ZOOM_STEP)
    window.document.apply_to_stage(lambda s: Stage("passthrough", slices=s.slices[:1]), "shorter")
    window.live_plan.refresh_now()
    assert view.geometry_.cell_h == pytest.approx(scale * ZOOM_STEP)
    view.zoom_fit.trigger()
    whole = max(view.output.num_layers, 80) * view.geometry_.cell_h
    assert whole <= view.viewport().height() and view.verticalScrollBar().maximum() == 0
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_Plus, Qt.KeyboardModifier.ControlModifier)
    assert view.geometry_.cell_h > whole / 80


def test_inspector_edits_and_key_nudges_are_one_undo_step_each(qtbot, window):
    load(window, passthrough(("A", 10, 20), ("B", 30, 40)), {"A": LLAMA_70B, "B": LLAMA_70B})
    inspector, undo = window.slice_inspector, window.document.undo_stack
    assert not inspector.sources
    window.document.select_slice(1)
    editor = inspector.sources[0]
    assert (editor.model_combo.currentText(), editor.start_spin.value(), editor.end_spin.value()) == ("B", 30, 40)
    editor.start_spin.setValue(25)
    assert ranges(window)[1] == ("B", (25, 40)) and undo.count() == 1
    editor.end_spin.setValue(50)
    assert ranges(window)[1] == ("B", (25, 50)) and undo.count() == 2
    editor.model_combo.textActivated.emit("A")
    assert ranges(window)[1] == ("A", (25, 50)) and undo.count() == 3
    view = window.stack_view
    view.setFocus()
    expected = [(Qt.KeyboardModifier.NoModifier, Qt.Key.Key_Down, (26, 51)),
                (Qt.KeyboardModifier.NoModifier, Qt.Key.Key_Up, (25, 50)),
                (Qt.KeyboardModifier.ShiftModifier, Qt.Key.Key_Down, (25, 51)),
                (Qt.KeyboardModifier.ControlModifier, Qt.Key.Key_Down, (26, 51))]
    for k, (modifier, key, layer_range) in enumerate(expected):
        QTest.keyClick(view, key, modifier)
        assert ranges(window)[1] == ("A", layer_range) and undo.count() == 4 + k
        assert (editor.start_spin.value(), editor.end_spin.value()) == layer_range  # the inspector follows
    undo.undo()
    assert ranges(window)[1] == ("A", (25, 51))


def test_the_stacks_fit_the_width_without_a_scroll_bar_and_ordinary_titles_keep_one_line(qtbot):
    """Rose-20B's two 40-layer donors: from the width of a 1280×800 window with the Estimate tab open
    upwards, the stacks fit (narrow columns where the wide ones would not) and each name is one line;
    narrower still, long names take two lines before a scroll bar is needed."""
    recipe = passthrough(("Thorns-13B", 0, 16), ("Noromaid-13B", 8, 24), ("Thorns-13B", 17, 32),
                         ("Noromaid-13B", 25, 40))
    document, registry = RecipeDocument(recipe), DonorRegistry()
    live_plan = LivePlan(document, registry)
    for name in ("Thorns-13B", "Noromaid-13B"):
        registry.set_donor(name, LLAMA_13B, resolve_donor(LLAMA_13B))
    live_plan.refresh_now()
    view = StackView(document, live_plan, registry)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    title_metrics, subtitle_metrics = (QFontMetrics(font) for font in header_fonts())
    densities = {}
    for width in range(430, 640, 12):
        view.resize(width, 600)
        qtbot.waitUntil(lambda w=width: view.width() == w)
        densities[width] = view._density
        assert view.sceneRect().width() <= view.viewport().width(), width
        assert view.horizontalScrollBar().maximum() == 0, width
        if width >= 460:
            for column in view.columns.values():
                assert title_lines(column.title, title_metrics, column.width) == [column.title], (width, column.title)
        shown = {subtitle_line(c.subtitle, subtitle_metrics, c.width) for c in view.columns.values()}
        assert len(shown) == 1, shown  # the two 40-layer donors' columns read alike
    assert densities[430] == "narrow" and densities[466] == "compact" and densities[634] == "wide"
