"""The t-curve editor: curves as mergekit applies them, dragging points with real mouse events."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
import pyqtgraph as pg

from merger_gui.core.inspect import donor_from_config
from merger_gui.core.donor import TensorInfo
from merger_gui.core.recipe import FilterRule, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape, donor_config, donor_tensor_shapes
from merger_gui.qt.curve_editor import TCurveEditor
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.live_plan import LivePlan

NYXENE_T = (
    FilterRule((0.75,), "lm_head"),
    FilterRule((0.75, 0.25), "self_attn"),
    FilterRule((0.25, 0.75), "mlp"),
    FilterRule((0.5, 0.5), "layernorm"),
    FilterRule((0.75,), "modelnorm"),
    FilterRule(0.5),
)


def donor(name: str, layers: int = 8):
    shape = DonorShape(num_layers=layers)
    tensors = tuple(TensorInfo(n, s, "F16") for n, s in donor_tensor_shapes(shape).items())
    return donor_from_config(name, "folder", donor_config(shape), tensors)


def slerp_recipe(t=NYXENE_T, ranges=((0, 8),)) -> Recipe:
    slices = tuple(Slice((SliceSource("a", r), SliceSource("b", r))) for r in ranges)
    return Recipe((Stage("slerp", slices=slices, base_model="a", parameters=Parameters({"t": t})),))


@pytest.fixture
def editor(qtbot):
    pg.setConfigOptions(mouseRateLimit=0)  # synthetic moves must not be dropped
    document = RecipeDocument(slerp_recipe())
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    with qtbot.waitSignal(live_plan.plan_changed, timeout=5000):
        registry.set_donor("a", "a", donor("a"))
        registry.set_donor("b", "b", donor("b"))
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    widget.resize(1000, 420)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def viewport_point(editor: TCurveEditor, x: float, y: float) -> QPoint:
    scene = editor.plot.getViewBox().mapViewToScene(QPointF(x, y))
    return editor.plot_widget.mapFromScene(scene)


def send_move(widget, pos: QPoint, buttons) -> None:
    global_pos = QPointF(widget.mapToGlobal(pos))
    event = QMouseEvent(QEvent.Type.MouseMove, QPointF(pos), global_pos, Qt.MouseButton.NoButton, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def drag(editor: TCurveEditor, start: QPoint, end: QPoint, steps: int = 6) -> None:
    viewport = editor.plot_widget.viewport()
    send_move(viewport, start, Qt.MouseButton.NoButton)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, steps + 1):
        send_move(viewport, start + (end - start) * k / steps, Qt.MouseButton.LeftButton)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def test_curves_follow_mergekit_evaluation(editor):
    # Over 8 layers [0.75, 0.25] falls linearly; [0.5, 0.5] is flat; the fallback rule is 0.5.
    attn = editor.curve_values(1)
    assert attn[0] == pytest.approx(0.75) and attn[-1] == pytest.approx(0.25)
    assert attn[3] == pytest.approx(0.75 - 0.5 * 3 / 7)
    assert editor.curve_values(2)[0] == pytest.approx(0.25)
    # lm_head and modelnorm rules take no layer tensor: their layer curves are empty.
    assert all(math.isnan(v) for v in editor.curve_values(0))
    assert "matches no tensor" in editor.rule_warnings[4]
    assert 0 not in editor.rule_warnings and 1 not in editor.rule_warnings
    item = editor.rule_list.item(4)
    assert not item.icon().isNull() and "modelnorm" in item.toolTip()


def test_curve_restarts_in_every_slice(editor, qtbot):
    with qtbot.waitSignal(editor.live_plan.plan_changed, timeout=3000):
        editor.document.apply(slerp_recipe(ranges=((0, 4), (4, 8))), "two slices")
    attn = editor.curve_values(1)
    assert attn[:4] == pytest.approx([0.75, 0.75 - 0.5 / 3, 0.25 + 0.5 / 3, 0.25])
    assert attn[4:] == pytest.approx(attn[:4])
    assert [p.x() for p in editor.handle_positions(1, 1)] == [3.0, 7.0]


def test_drag_point_previews_then_commits_one_undo_step(editor, qtbot):
    document = editor.document
    start = editor.handle_positions(1, 1)[0]
    assert (start.x(), start.y()) == (7.0, 0.25)
    previews = []
    editor.handles.sigPointMoved.connect(lambda r, p, v: previews.append((v, document.recipe)))
    with qtbot.waitSignal(document.recipe_changed, timeout=3000):
        drag(editor, viewport_point(editor, 7, 0.25), viewport_point(editor, 7, 0.9))
    assert len(previews) > 2 and all(r == slerp_recipe() for _, r in previews)  # no edit while dragging
    assert previews[0][0] < previews[-1][0]
    value = document.stage.parameters["t"][1].value
    assert value[0] == 0.75 and value[1] == pytest.approx(0.9, abs=0.01)
    assert document.undo_stack.count() == 1
    assert editor.curve_values(1)[-1] == pytest.approx(value[1])
    document.undo_stack.undo()
    assert document.stage.parameters["t"][1].value == (0.75, 0.25)


def test_drag_is_clamped_to_unit_range(editor, qtbot):
    with qtbot.waitSignal(editor.document.recipe_changed, timeout=3000):
        drag(editor, viewport_point(editor, 7, 0.75), viewport_point(editor, 7, 1.6))
    assert editor.document.stage.parameters["t"][2].value == (0.25, 1.0)


def test_rule_list_edits(editor):
    document = editor.document
    editor.add_rule("o_proj")
    assert [r.filter for r in document.stage.parameters["t"]][-2:] == ["o_proj", None]
    editor.move_rule(5, -1)
    assert document.stage.parameters["t"][4].filter == "o_proj"
    editor.rule_list.item(4).setText("q_proj")  # rename in place
    assert document.stage.parameters["t"][4].filter == "q_proj"
    editor.apply_preset(1, "v")
    assert document.stage.parameters["t"][1].value == (0.75, 0.25, 0.75)
    editor.add_point(2)
    assert document.stage.parameters["t"][2].value == (0.25, 0.5, 0.75)
    editor.remove_point(2, 1)
    assert document.stage.parameters["t"][2].value == (0.25, 0.75)
    editor.remove_rule(5)
    assert "modelnorm" not in [r.filter for r in document.stage.parameters["t"]]
    assert document.undo_stack.count() == 7


def test_fallback_first_shadows_later_rules(editor):
    for k in range(5):
        editor.move_rule(5 - k, -1)
    assert editor.document.stage.parameters["t"][0].filter is None
    assert all("shadowed" in editor.rule_warnings[r] for r in range(1, 6))


def test_per_model_weights_of_other_methods(qtbot):
    recipe = Recipe((Stage("linear", models=(ModelEntry("a", Parameters({"weight": (1.0, 0.0)})),
                                             ModelEntry("b", Parameters({"weight": 0.5})))),))
    document = RecipeDocument(recipe)
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    with qtbot.waitSignal(live_plan.plan_changed, timeout=5000):
        registry.set_donor("a", "a", donor("a", 5))
        registry.set_donor("b", "b", donor("b", 5))
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    labels = [widget.target_combo.itemText(i) for i in range(widget.target_combo.count())]
    assert labels == ["weight · a", "weight · b"]
    assert widget.curve_values(0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    widget.select_target("weight · b")
    assert widget.curve_values(0) == pytest.approx([0.5] * 5)
    widget.apply_preset(0, "linear")
    assert document.stage.models[1].parameters["weight"] == (0.0, 1.0)


def test_without_donors_curves_follow_the_layer_ranges(qtbot):
    """No donor information: the curves still run over the slices' output layers, with a note why."""
    document = RecipeDocument(slerp_recipe(ranges=((0, 4), (2, 8))))
    live_plan = LivePlan(document, DonorRegistry())
    live_plan.refresh_now()
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    rules = widget.rules()
    self_attn = next(i for i, r in enumerate(rules) if r.filter == "self_attn")
    values = widget.curve_values(self_attn)
    assert len(values) == 4 + 6  # one value per output layer, by layer_range lengths
    assert values[0] == pytest.approx(0.75) and values[3] == pytest.approx(0.25)  # restarts per slice
    assert values[4] == pytest.approx(0.75) and values[9] == pytest.approx(0.25)
    assert "layer ranges" in widget.summary.text() and "no full plan" in widget.summary.text()
    assert [p.x() for p in widget.handle_positions(self_attn, 1)] == [3.0, 9.0]


def stage_editor(qtbot, stage: Stage) -> TCurveEditor:
    document = RecipeDocument(Recipe((stage,)))
    live_plan = LivePlan(document, DonorRegistry())
    live_plan.refresh_now()
    widget = TCurveEditor(document, live_plan)
    qtbot.addWidget(widget)
    widget.show()  # a hidden editor draws when shown
    return widget


def two_source_stage(method: str, **parameters) -> Stage:
    sources = (SliceSource("a", (0, 4)), SliceSource("b", (0, 4), Parameters({"weight": 1.0})))
    return Stage(method, slices=(Slice(sources),), base_model="a", parameters=Parameters(parameters))


@pytest.mark.parametrize("method, curves, settings", [
    ("della", ["lambda", "weight · b", "density · b", "epsilon · b"], ["int8_mask", "normalize", "rescale"]),
    ("breadcrumbs", ["lambda", "weight · b", "density · b", "gamma · b"], ["int8_mask", "normalize", "rescale"]),
    ("sce", ["select_topk"], ["int8_mask"]),
    ("ramplus_tl", ["r", "alpha"], ["epsilon"]),  # RAM's epsilon is a threshold, not a curve
    ("multislerp", ["weight · b"], ["normalize_weights", "eps"]),
    ("karcher", [], ["max_iter", "tol"]),
])
def test_newer_methods_show_their_parameters_as_curves_or_settings(qtbot, method, curves, settings):
    widget = stage_editor(qtbot, two_source_stage(method))
    assert [widget.target_combo.itemText(i) for i in range(widget.target_combo.count())] == curves
    assert [s.name for s in widget.settings.specs] == settings
    assert widget.curve_area.isHidden() == (not curves)
    assert not widget.settings_box.isHidden()
    assert widget.no_curves_label.isHidden() == bool(curves)
    if not curves:
        assert "no per-layer curves" in widget.no_curves_label.text()


def test_settings_edit_the_recipe_as_one_undo_step_each(qtbot):
    widget = stage_editor(qtbot, two_source_stage("karcher"))
    document = widget.document
    max_iter, tol = widget.settings.editors["max_iter"], widget.settings.editors["tol"]
    assert max_iter.text() == "" and max_iter.placeholderText() == "10 (default)"
    assert widget.settings.reset_buttons["max_iter"].isHidden()
    max_iter.setText("25")
    max_iter.editingFinished.emit()
    assert document.stage.parameters["max_iter"] == 25 and isinstance(document.stage.parameters["max_iter"], int)
    assert not widget.settings.reset_buttons["max_iter"].isHidden()
    tol.setText("1e-7")
    tol.editingFinished.emit()
    assert document.stage.parameters["tol"] == pytest.approx(1e-7)
    tol.setText("tiny")  # not a number: nothing changes, the value in effect shows again
    tol.editingFinished.emit()
    assert document.stage.parameters["tol"] == pytest.approx(1e-7) and tol.text() == "1e-07"
    assert document.undo_stack.count() == 2
    widget.settings.reset_buttons["max_iter"].click()
    assert "max_iter" not in document.stage.parameters
    document.undo_stack.undo()
    assert max_iter.text() == "25"


def test_switch_settings_use_check_boxes(qtbot):
    widget = stage_editor(qtbot, two_source_stage("multislerp"))
    box = widget.settings.editors["normalize_weights"]
    assert box.isChecked() and "default" in box.text()  # the method's default: on
    box.click()
    assert widget.document.stage.parameters["normalize_weights"] is False
    assert not box.isChecked() and "default" not in box.text()


def test_nearswap_t_is_drawn_on_its_own_scale(qtbot):
    widget = stage_editor(qtbot, two_source_stage("nearswap", t=0.0005))
    low, high = widget.handles.value_range
    assert (low, high) == (0.0, 0.01)  # a distance of about 1e-4, not a fraction


def test_passthrough_without_scale_says_the_tensors_are_unscaled(qtbot):
    widget = stage_editor(qtbot, Stage("passthrough", slices=(Slice((SliceSource("a", (0, 4)),)),)))
    assert "unscaled" in widget.summary.text() and "no value" not in widget.summary.text()
    assert widget.settings_box.isHidden()


def test_an_unset_parameter_shows_its_default_as_a_dashed_line(qtbot):
    widget = stage_editor(qtbot, two_source_stage("ramplus_tl"))
    assert widget.target.name == "r" and widget.rules() == ()
    assert widget.default_line.isVisible() and widget.default_line.value() == pytest.approx(0.1)
    widget.add_rule(None)
    assert widget.rules() and not widget.default_line.isVisible()


def test_an_empty_stage_says_what_to_add_before_its_curves_show(qtbot):
    widget = stage_editor(qtbot, Stage("passthrough", slices=()))
    assert widget.curve_area.isHidden() and "Add a slice to shape Passthrough's scale" in widget.no_curves_label.text()
