"""The per-layer grid and the precise point editing of the curve editor: paste, snapping,
readout, click insertion, arrow keys, presets and user presets (mergekit as the oracle)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication, QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
import yaml

from merger_gui.core.gradient_fit import evaluate, row_positions
from merger_gui.core.recipe_yaml import dump_recipe
from merger_gui.qt.settings import Settings

from test_gradient_fit import mergekit_row
from merger_gui.qt.curve_editor import TCurveEditor
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.live_plan import LivePlan
import pyqtgraph as pg

from test_qt_curves import donor, slerp_recipe, viewport_point

SELF_ATTN = 1  # NYXENE_T's rule over every layer's attention tensors


@pytest.fixture
def editor(qtbot) -> TCurveEditor:
    """The editor over the Nyxene t rules, two 8-layer donors planned."""
    pg.setConfigOptions(mouseRateLimit=0)  # synthetic moves must not be dropped
    document = RecipeDocument(slerp_recipe())
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    with qtbot.waitSignal(live_plan.plan_changed, timeout=5000):
        registry.set_donor("a", "a", donor("a"))
        registry.set_donor("b", "b", donor("b"))
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    widget.resize(1000, 560)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def yaml_t(document) -> list:
    return yaml.safe_load(dump_recipe(document.recipe))["parameters"]["t"]


def drag(editor: TCurveEditor, start: QPoint, end: QPoint, modifiers=Qt.KeyboardModifier.NoModifier,
         on_move=None) -> None:
    viewport = editor.plot_widget.viewport()

    def move(pos: QPoint, buttons) -> None:
        QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseMove, QPointF(pos),
                                                     QPointF(viewport.mapToGlobal(pos)), Qt.MouseButton.NoButton,
                                                     buttons, modifiers))

    move(start, Qt.MouseButton.NoButton)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, modifiers, start)
    for k in range(1, 7):
        move(start + (end - start) * k / 6, Qt.MouseButton.LeftButton)
        if on_move:
            on_move()
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, modifiers, end)


@pytest.mark.mergekit
def test_pasting_a_row_writes_yaml_that_mergekit_evaluates_to_it(editor):
    pytest.importorskip("mergekit")
    row = [0.1, 0.2, 0.35, 0.5, 0.5, 0.45, 0.3, 0.1]
    table = editor.grid.table
    assert table.columnCount() == 8 and table.rowCount() == len(editor.rules())
    assert [table.item(SELF_ATTN, c).text() for c in (0, 7)] == ["0.75", "0.25"]
    table.setFocus()
    table.setCurrentCell(SELF_ATTN, 0)
    QGuiApplication.clipboard().setText("\t".join(map(str, row)) + "\n")  # a spreadsheet row
    QTest.keyClick(table, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    value = next(r["value"] for r in yaml_t(editor.document) if r.get("filter") == "self_attn")
    assert [round(v, 4) for v in mergekit_row(tuple(value), 8)] == row
    assert len(value) <= 8 and editor.document.undo_stack.count() == 1
    assert [float(table.item(SELF_ATTN, c).text()) for c in range(8)] == row
    assert editor.curve_values(SELF_ATTN) == pytest.approx(row)


def test_typing_a_constant_row_keeps_a_scalar_and_one_undo_step(editor):
    document = editor.document
    for c in range(8):  # one cell at a time: each edit its own undo step
        editor.grid.table.item(SELF_ATTN, c).setText("0.4")
    assert document.stage.parameters["t"][SELF_ATTN].value == 0.4
    assert document.undo_stack.count() == 8
    editor.grid.table.item(SELF_ATTN, 0).setText("banana")
    assert "not a number" in editor.grid.message.text() and document.undo_stack.count() == 8


def test_a_shared_gradient_that_cannot_give_the_row_is_explained_not_written(editor, qtbot):
    with qtbot.waitSignal(editor.live_plan.plan_changed, timeout=3000):
        editor.document.apply(slerp_recipe(ranges=((0, 4), (4, 8))), "two slices")
    before = editor.document.recipe
    grid = editor.grid
    seams = [c for c in range(8) if grid.table.item(0, c).data(Qt.ItemDataRole.UserRole + 1)]
    assert seams == [4]  # the second slice starts at output layer 4
    assert not grid.paste_text("0.1,0.2,0.3,0.4,0.1,0.2,0.3,0.5", SELF_ATTN, 0)
    assert "cannot be represented per layer" in grid.message.text() and not grid.message.isHidden()
    assert editor.document.recipe == before and grid.table.item(SELF_ATTN, 7).text() == "0.25"
    assert grid.paste_text("0.1,0.2,0.3,0.4,0.1,0.2,0.3,0.4", SELF_ATTN, 0)
    assert editor.document.stage.parameters["t"][SELF_ATTN].value == (0.1, 0.4)
    assert grid.message.isHidden()


def test_drag_snaps_and_shows_a_live_readout(editor, qtbot):
    document = editor.document
    readouts = []
    target = viewport_point(editor, 7, 0.6035)
    with qtbot.waitSignal(document.recipe_changed, timeout=3000):
        drag(editor, viewport_point(editor, 7, 0.25), target,
             on_move=lambda: readouts.append((editor.readout.isVisible(), editor.readout.toPlainText())))
    end = document.stage.parameters["t"][SELF_ATTN].value[1]
    assert round(end / 0.05, 6).is_integer() and end == pytest.approx(0.6, abs=0.051)
    assert readouts and all(visible for visible, _ in readouts)
    assert readouts[-1][1] == f"t = {end:.2f}" and not editor.readout.isVisible()
    with qtbot.waitSignal(document.recipe_changed, timeout=3000):  # Shift: steps of 0.01
        drag(editor, viewport_point(editor, 7, end), viewport_point(editor, 7, 0.333),
             modifiers=Qt.KeyboardModifier.ShiftModifier)
    fine = document.stage.parameters["t"][SELF_ATTN].value[1]
    assert round(fine / 0.01, 6).is_integer() and fine == pytest.approx(0.33, abs=0.011)


def test_double_click_inserts_a_point_through_the_click(editor, qtbot):
    editor.rule_list.setCurrentRow(SELF_ATTN)
    viewport, at = editor.plot_widget.viewport(), viewport_point(editor, 3, 0.9)
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    with qtbot.waitSignal(editor.document.recipe_changed, timeout=3000):
        QTest.mouseClick(viewport, left, none, at)
        QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseButtonDblClick, QPointF(at),
                                                     QPointF(viewport.mapToGlobal(at)), left, left, none))
        QTest.mouseRelease(viewport, left, none, at)
    value = editor.document.stage.parameters["t"][SELF_ATTN].value
    assert len(value) == 3 and editor.document.undo_stack.count() == 1
    assert evaluate(value, 3 / 7) == pytest.approx(0.9, abs=2e-3)  # layer 3 of 8 is at x = 3/7 (± a pixel)


def test_arrow_keys_move_the_selected_point(editor):
    editor.select_point(SELF_ATTN, 0)
    assert editor.selection_ring.data["x"].tolist() == [0.0]
    QTest.keyClick(editor.plot_widget, Qt.Key.Key_Down)
    assert editor.document.stage.parameters["t"][SELF_ATTN].value == (0.7, 0.25)
    QTest.keyClick(editor.plot_widget, Qt.Key.Key_Right)
    QTest.keyClick(editor.plot_widget, Qt.Key.Key_Up, Qt.KeyboardModifier.ShiftModifier)
    assert editor.document.stage.parameters["t"][SELF_ATTN].value == (0.7, 0.26)
    assert editor.document.undo_stack.count() == 2


def test_a_preset_is_one_undo_step_and_exact_per_layer(editor):
    document = editor.document
    editor.apply_preset(SELF_ATTN, "inverted v")
    value = document.stage.parameters["t"][SELF_ATTN].value
    assert value == (0.25, 0.75, 0.25) and document.undo_stack.count() == 1
    editor.apply_preset(SELF_ATTN, "wrap")
    row = [round(evaluate(document.stage.parameters["t"][SELF_ATTN].value, x), 4) for x in row_positions(8)]
    assert row == [0.75, 0.75, 0.25, 0.25, 0.25, 0.25, 0.75, 0.75]
    editor.invert_rule(SELF_ATTN)
    assert document.stage.parameters["t"][SELF_ATTN].value[0] == 0.25
    editor.apply_preset(SELF_ATTN, "linear")
    editor.mirror_rule(SELF_ATTN)
    assert document.stage.parameters["t"][SELF_ATTN].value == (0.75, 0.25)
    editor.copy_rule(SELF_ATTN, 2)
    assert document.stage.parameters["t"][2].value == (0.75, 0.25)
    assert document.undo_stack.count() == 6
    document.undo_stack.setIndex(0)
    assert document.stage.parameters["t"][SELF_ATTN].value == (0.75, 0.25)


def test_user_presets_survive_a_restart(editor):
    editor.apply_preset(SELF_ATTN, "v")
    editor.save_user_preset(SELF_ATTN, "deep valley")
    again = Settings()  # a new object on the same settings file, as after a restart
    assert again.curve_presets == {"deep valley": (0.75, 0.25, 0.75)}
    editor.apply_user_preset(2, "deep valley")
    assert editor.document.stage.parameters["t"][2].value == (0.75, 0.25, 0.75)
    editor._fill_shape_menu(editor.shape_menu, 2)
    assert "★ deep valley" in [a.text() for a in editor.shape_menu.actions()]
    again.remove_curve_preset("deep valley")
    assert Settings().curve_presets == {}


def test_the_selected_rule_is_drawn_on_top_and_overlaps_are_named(editor):
    editor.rule_list.setCurrentRow(2)
    items = editor.curve_items
    assert items[2].zValue() > max(items[r].zValue() for r in items if r != 2)
    assert items[2].opts["pen"].widthF() > items[SELF_ATTN].opts["pen"].widthF()
    assert items[2].opts["symbol"] != items[SELF_ATTN].opts["symbol"]
    assert editor.grid.table.currentRow() == 2
    editor.copy_rule(2, 3)  # layernorm now lies under mlp
    assert "under mlp" in " ".join(legend_lines(editor)).replace("\xa0", " ")
    editor.grid.table.setCurrentCell(SELF_ATTN, 0)
    assert editor.rule_list.currentRow() == SELF_ATTN


def legend_lines(editor: TCurveEditor) -> list[str]:
    """The legend's lines as the label wraps them (its text laid out at its width in its font)."""
    from PySide6.QtGui import QTextDocument

    document = QTextDocument()
    document.setDefaultFont(editor.legend.font())
    document.setDocumentMargin(0)
    document.setHtml(editor.legend.text())
    document.setTextWidth(editor.legend.contentsRect().width())
    document.documentLayout().documentSize()  # lays the text out
    lines, block = [], document.begin()
    while block.isValid():
        layout = block.layout()
        for k in range(layout.lineCount()):
            line = layout.lineAt(k)
            lines.append(block.text()[line.textStart():line.textStart() + line.textLength()])
        block = block.next()
    return lines


@pytest.mark.parametrize("width", [340, 400, 480])
def test_in_a_laptop_dock_the_grid_shows_every_rule_and_the_legend_breaks_between_entries(editor, qtbot, width):
    from merger_gui.qt.curve_editor import LEGEND_MARKS

    editor.add_rule("input_layernorm")  # seven rules, as Nyxene's stage 3 has
    editor.resize(width, 656)  # the t-curves tab of a 1366×768 window
    qtbot.waitUntil(lambda: editor.height() == 656)
    table = editor.grid.table
    assert table.rowCount() == 7
    assert table.verticalHeader().length() <= table.viewport().height()  # no rule scrolled out of sight
    assert editor.plot_widget.height() >= 0.4 * (editor.plot_widget.height() + editor.grid.height())
    lines = legend_lines(editor)
    assert len(lines) > 1
    assert all(line.lstrip()[0] in LEGEND_MARKS for line in lines), lines  # each line starts an entry


def test_a_moved_split_is_kept_until_the_rules_change(editor, qtbot):
    editor.resize(400, 656)
    qtbot.waitUntil(lambda: editor.height() == 656)
    plot, grid = editor.splitter.sizes()
    editor.splitter.moveSplitter(plot + 40, 1)  # what dragging the handle does
    assert editor.splitter.sizes()[1] == grid - 40
    editor.rule_list.setCurrentRow(2)
    editor.convert_rule(2)  # an edit with the same rules keeps the user's split
    assert editor.splitter.sizes()[1] == grid - 40
    editor.add_rule("input_layernorm")
    assert editor.splitter.sizes()[1] > grid  # a new rule: the grid fits its rows again
