"""Stage settings bar, multi-source slices and stage list edits, driven through the main window."""

from __future__ import annotations


import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPoint, QPointF, QSettings, Qt, QThreadPool
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QComboBox
import pyqtgraph as pg

from merger_gui.core.methods import METHODS
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.demo import DEMO_MODELS, create_demo_donors
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.slice_items import CELL_LABEL_W, LINK_DY

LLAMA_13B = "profile:llama-2-13b"
A, B = DEMO_MODELS
ROSE = (("Thorns", 0, 16), ("Noromaid", 8, 24), ("Thorns", 17, 32), ("Noromaid", 25, 40))
LINEAR_MODELS = """merge_method: linear
models:
  - model: demo-donor-a
    parameters:
      weight: [1.0, 0.0]
  - model: demo-donor-b
    parameters:
      weight: 0.5
dtype: float16
"""


@pytest.fixture(autouse=True)
def unthrottled_mouse():
    pg.setConfigOptions(mouseRateLimit=0)  # synthetic curve drags must not be dropped


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


@pytest.fixture
def demo_refs(tmp_path_factory):
    return create_demo_donors(tmp_path_factory.mktemp("demo"))[1]


def load(win: MainWindow, recipe: Recipe, donors: dict[str, str]) -> None:
    win.registry.clear()
    win.document.load(recipe)
    for name, ref in donors.items():
        win.registry.set_donor(name, ref, resolve_donor(ref))
    win.live_plan.refresh_now()
    win.stack_view.rebuild()


def rose() -> Recipe:
    return Recipe((Stage("passthrough", slices=tuple(Slice((SliceSource(m, (s, e)),)) for m, s, e in ROSE),
                         dtype="float16"),))


def choose(combo: QComboBox, value: str | None) -> None:
    """Pick an item the way a user does: the combo emits ``activated``."""
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def settle(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: not win.live_plan.is_pending, timeout=3000)
    win.live_plan.refresh_now()


def sources(win: MainWindow) -> list[list[tuple[str, tuple[int, int]]]]:
    return [[(s.model, s.layer_range) for s in sl.sources] for sl in win.document.stage.slices]


def drag(win: MainWindow, start: QPoint, end: QPoint, steps: int = 6) -> None:
    viewport = win.stack_view.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, steps + 1):
        QTest.mouseMove(viewport, start + (end - start) * (k / steps))
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def cell_point(win: MainWindow, model: str, layer: float) -> QPoint:
    view = win.stack_view
    return view.mapFromScene(QPointF(view.columns[model].x() + CELL_LABEL_W / 2, view.geometry_.y(layer)))


def bar_point(win: MainWindow, slice_index: int, source_index: int, layer: float) -> QPoint:
    view = win.stack_view
    bar = view.slice_bar(slice_index, source_index)
    return view.mapFromScene(QPointF(bar.x() + bar.width / 2, view.geometry_.y(layer)))


def test_rose_to_slerp_and_back(qtbot, window):
    load(window, rose(), {"Thorns": LLAMA_13B, "Noromaid": LLAMA_13B})
    bar = window.stage_settings
    assert bar.method_combo.currentData() == "passthrough"
    choose(bar.method_combo, "slerp")
    assert window.document.undo_stack.count() == 1
    stage = window.document.stage
    assert stage.merge_method == "slerp" and stage.base_model == "Thorns" and stage.parameters["t"] == 0.5
    assert sources(window)[1] == [("Noromaid", (8, 24)), ("Thorns", (8, 24))]
    text = window.yaml_editor.text()
    assert "merge_method: slerp" in text and "base_model: Thorns" in text and "t: 0.5" in text
    settle(qtbot, window)
    plan = window.live_plan.stage_plan(0)
    assert plan.num_layers == 62 and [s.model for s in plan.layers[20].sources] == ["Noromaid", "Thorns"]
    assert len(window.stack_view.output.layer_map.layers[0].sources) == 2  # split output cells
    assert window.stack_view.slice_bar(1, 1).model == "Thorns"  # linked bar in the other column
    assert bar.base_combo.currentData() == "Thorns"  # the bar follows the document
    choose(bar.method_combo, "passthrough")
    assert window.document.recipe == rose()
    window.document.undo_stack.undo()
    assert window.document.stage.merge_method == "slerp" and bar.method_combo.currentData() == "slerp"
    assert window.document.undo_stack.count() == 2  # showing the undo did not echo an edit


def test_slerp_from_scratch_with_one_drag_then_a_t_point(qtbot, window, demo_refs):
    load(window, Recipe((Stage("passthrough", slices=()),)), demo_refs)
    choose(window.stage_settings.method_combo, "slerp")
    assert window.document.stage.base_model == A
    window.stack_view.rebuild()
    drag(window, cell_point(window, B, 0.5), cell_point(window, B, 7.5))
    assert sources(window) == [[(B, (0, 8)), (A, (0, 8))]]
    assert window.stack_view.slice_bar(0, 1).model == A
    settle(qtbot, window)
    plan = window.live_plan.stage_plan(0)
    assert plan.num_layers == 8 and all(len(layer.sources) == 2 for layer in plan.layers)

    editor = window.curve_editor
    window.tools.setCurrentWidget(editor)
    qtbot.waitExposed(editor)
    editor.refresh()
    point = editor.handle_positions(0, 0)[0]
    assert point.y() == pytest.approx(0.5)
    viewport = editor.plot_widget.viewport()

    def at(x: float, y: float) -> QPoint:
        return editor.plot_widget.mapFromScene(editor.plot.getViewBox().mapViewToScene(QPointF(x, y)))

    start, end = at(point.x(), 0.5), at(point.x(), 0.8)
    move = lambda pos, buttons: QApplication.sendEvent(viewport, QMouseEvent(  # noqa: E731
        QEvent.Type.MouseMove, QPointF(pos), QPointF(viewport.mapToGlobal(pos)), Qt.MouseButton.NoButton, buttons,
        Qt.KeyboardModifier.NoModifier))
    move(start, Qt.MouseButton.NoButton)
    with qtbot.waitSignal(window.document.recipe_changed, timeout=3000):
        QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
        for k in range(1, 7):
            move(start + (end - start) * k / 6, Qt.MouseButton.LeftButton)
        QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    assert window.document.stage.parameters["t"] == pytest.approx(0.8, abs=0.01)
    text = window.yaml_editor.text()
    assert "merge_method: slerp" in text and f"base_model: {A}" in text and "t: 0.8" in text
    assert window.document.undo_stack.count() == 3


def test_sources_of_a_slice_move_alone_but_resize_together(qtbot, window, demo_refs):
    slerp = Stage("slerp", slices=(Slice((SliceSource(A, (2, 6)), SliceSource(B, (2, 6)))),), base_model=A)
    load(window, Recipe((slerp,)), demo_refs)
    cell_h = window.stack_view.geometry_.cell_h
    body = bar_point(window, 0, 1, 4)
    drag(window, body, body + QPoint(0, round(2 * cell_h)))
    assert sources(window) == [[(A, (2, 6)), (B, (4, 8))]]
    edge = bar_point(window, 0, 0, 6) - QPoint(0, 1)
    drag(window, edge, edge - QPoint(0, round(2 * cell_h)))
    assert sources(window) == [[(A, (2, 4)), (B, (4, 6))]]
    window.stack_view.remove_source(0, 0)
    assert sources(window) == [[(B, (4, 6))]]
    window.stack_view.add_source(0, A)
    assert sources(window) == [[(B, (4, 6)), (A, (4, 6))]]
    assert window.document.undo_stack.count() == 4


def test_the_link_between_sources_follows_a_drag_before_release(qtbot, window, demo_refs):
    slerp = Stage("slerp", slices=(Slice((SliceSource(A, (2, 6)), SliceSource(B, (2, 6)))),), base_model=A)
    load(window, Recipe((slerp,)), demo_refs)
    view, viewport = window.stack_view, window.stack_view.viewport()
    still, moved = view.slice_bar(0, 0), view.slice_bar(0, 1)

    def top(bar) -> QPointF:  # where a link meets the bar, in scene coordinates
        return bar.mapToScene(QPointF(0, bar.bar_rect().top() + LINK_DY))

    start, end = bar_point(window, 0, 1, 4), bar_point(window, 0, 1, 6)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, 7):
        QTest.mouseMove(viewport, start + (end - start) * (k / 6))
    assert moved.range == (4, 8) and sources(window) == [[(A, (2, 6)), (B, (2, 6))]]  # not released yet
    [link] = view.links
    line = link.line()
    assert link.mapToScene(line.p2()) == top(moved)
    assert link.mapToScene(line.p1()) == top(still) + QPointF(still.width, 0)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    assert sources(window) == [[(A, (2, 6)), (B, (4, 8))]]
    [link] = view.links
    assert link.mapToScene(link.line().p2()) == top(view.slice_bar(0, 1))


def test_base_dtype_and_tokenizer_combos(window):
    load(window, rose(), {"Thorns": LLAMA_13B, "Noromaid": LLAMA_13B})
    bar = window.stage_settings
    assert [bar.base_combo.itemText(i) for i in range(bar.base_combo.count())] == ["(none)", "Thorns", "Noromaid"]
    assert bar.dtype_combo.currentData() == "float16" and bar.out_dtype_combo.currentText() == "(default)"
    choose(bar.base_combo, "Noromaid")
    choose(bar.dtype_combo, "bfloat16")
    choose(bar.out_dtype_combo, "float16")
    choose(bar.tokenizer_combo, "union")
    stage = window.document.stage
    assert (stage.base_model, stage.dtype, stage.out_dtype, stage.tokenizer_source) == \
        ("Noromaid", "bfloat16", "float16", "union")
    text = window.yaml_editor.text()
    assert "base_model: Noromaid" in text and "dtype: bfloat16" in text and "out_dtype: float16" in text
    assert "tokenizer_source: union" in text
    assert window.document.undo_stack.count() == 4
    choose(bar.tokenizer_combo, "Thorns")
    assert window.document.stage.tokenizer_source == "Thorns"
    choose(bar.dtype_combo, None)
    assert window.document.stage.dtype is None and "dtype: bfloat16" not in window.yaml_editor.text()
    window.document.undo_stack.undo()
    window.document.undo_stack.undo()
    assert bar.tokenizer_combo.currentData() == "union" and bar.dtype_combo.currentData() == "bfloat16"
    assert window.document.undo_stack.index() == 4


def test_add_rename_remove_stages_with_undo(qtbot, window):
    load(window, rose(), {"Thorns": LLAMA_13B, "Noromaid": LLAMA_13B})
    assert window.stage_bar.isHidden() and window.stage_settings.name_field.isHidden()
    window.stage_actions.add.trigger()
    recipe = window.document.recipe
    assert recipe.stage_names() == ("stage-1", "stage-2") and window.document.current_stage == 1
    assert not window.stage_bar.isHidden() and not window.stage_settings.name_field.isHidden()
    settle(qtbot, window)
    window.stack_view.rebuild()
    assert "stage-1" in window.stack_view.columns  # the earlier stage is a donor
    drag(window, cell_point(window, "stage-1", 10.5), cell_point(window, "stage-1", 19.5))
    assert sources(window) == [[("stage-1", (10, 20))]]
    window.document.set_current_stage(0)
    window.stage_settings.name_edit.setText("rose")
    window.stage_settings.name_edit.editingFinished.emit()
    assert window.document.recipe.stage_names() == ("rose", "stage-2")
    assert window.document.recipe.stages[1].slices[0].sources[0].model == "rose"
    text = window.yaml_editor.text()
    assert "name: rose" in text and "- model: rose" in text and "stage-1" not in text
    assert window.stage_bar.tabText(0) == "rose"
    window.stage_actions.rename_stage(1, "rose")  # taken: nothing happens
    assert window.document.undo_stack.count() == 3
    window.document.set_current_stage(1)
    window.stage_actions.remove.trigger()
    assert len(window.document.recipe.stages) == 1 and window.document.current_stage == 0
    assert not window.stage_actions.remove.isEnabled()
    for _ in range(4):
        window.document.undo_stack.undo()
    assert window.document.recipe == rose()
    assert "Add stage" in [a.text() for a in window.menuBar().actions()[1].menu().actions()]


def test_models_form_recipe_renders_in_stack_and_weight_editor(qtbot, window, demo_refs):
    load(window, rose(), demo_refs)
    window.yaml_editor.editor.setPlainText(LINEAR_MODELS)
    with qtbot.waitSignal(window.document.recipe_changed, timeout=3000):
        pass  # the typing pause elapses
    assert window.document.stage.models is not None
    settle(qtbot, window)
    window.stack_view.rebuild()
    assert window.stage_settings.method_combo.currentData() == "linear"
    assert {A, B} <= set(window.stack_view.columns) and window.stack_view.bars == []
    output = window.stack_view.output
    assert output is not None and output.num_layers == 8
    assert all([s.model for s in layer.sources] == [A, B] for layer in output.layer_map.layers)
    editor = window.curve_editor
    labels = [editor.target_combo.itemText(i) for i in range(editor.target_combo.count())]
    assert labels == [f"weight · {A}", f"weight · {B}"]
    assert editor.curve_values(0)[0] == pytest.approx(1.0) and editor.curve_values(0)[-1] == pytest.approx(0.0)


def test_every_method_of_the_combo_gives_a_valid_stage(qtbot, window):
    load(window, rose(), {"Thorns": LLAMA_13B, "Noromaid": LLAMA_13B})
    combo = window.stage_settings.method_combo
    choose(combo, "slerp")
    methods = [combo.itemData(i) for i in range(combo.count()) if combo.itemData(i) is not None]
    assert sorted(methods) == sorted(METHODS) and combo.count() == len(METHODS) + 3  # three separators
    for method in methods:
        choose(combo, method)
        window.live_plan.refresh_now()
        stage = window.document.stage
        errors = [f.message for f in window.live_plan.findings if f.severity == "error"]
        assert stage.merge_method == method and combo.currentData() == method
        assert errors == [] or method == "model_stock", (method, errors)  # model_stock needs a third donor
        window.document.undo_stack.setIndex(1)  # each from the slerp stage
    choose(combo, "linear")
    assert "weight: 0.5" in window.yaml_editor.text()
    labels = [window.curve_editor.target_combo.itemText(i) for i in range(window.curve_editor.target_combo.count())]
    assert "weight · Thorns (slice 1)" in labels  # the default weights are curves to edit
