"""Per-layer rows ↔ gradient lists: the shortest exact fit (mergekit as the oracle), snapping,
click insertion, presets, invert/mirror/copy and the grid's rows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merger_gui.core import parameter_edits as edits
from merger_gui.core.curve_rows import RowError, rule_rows, set_rule_row, values_at_layer
from merger_gui.core.curves import CurveTarget, curve_layout, layers_from_ranges
from merger_gui.core.gradient_fit import (
    PRESETS, evaluate, fit_row, fit_samples, insert_anchor, invert, mirror, preset_gradient, row_positions, snap,
    snap_step,
)
from merger_gui.core.plan import plan_stage
from merger_gui.core.recipe import FilterRule, Parameters, Slice, SliceSource, Stage

from test_parameter_rules import donor


def mergekit_row(gradient, length: int) -> list[float]:
    """mergekit's own values of ``gradient`` at the layers of a slice of ``length`` layers."""
    from mergekit.merge_methods.base import ParameterScope, ParameterSpec
    from mergekit.parameter_resolver import resolve_parameter

    spec = ParameterSpec("p", float, ParameterScope.SHARED)
    setting = list(gradient) if isinstance(gradient, tuple) else gradient
    return [resolve_parameter(spec, [{"p": setting}], tensor_name="x", t=i / (length - 1) if length > 1 else 1)
            for i in range(length)]


ANCHORS = st.lists(st.integers(-100, 200).map(lambda v: v / 100), min_size=1, max_size=8)


@pytest.mark.mergekit
@settings(max_examples=120, deadline=None)
@given(anchors=ANCHORS, length=st.integers(1, 40))
def test_a_row_made_by_a_gradient_fits_back_exactly_and_never_longer(anchors, length):
    pytest.importorskip("mergekit")
    row = [round(v, 4) for v in mergekit_row(tuple(anchors), length)]
    fitted = fit_row(row)
    assert fitted is not None
    assert [round(v, 4) for v in mergekit_row(fitted, length)] == row
    assert (len(fitted) if isinstance(fitted, tuple) else 1) <= len(anchors)


@pytest.mark.mergekit
@settings(max_examples=40, deadline=None)
@given(row=st.lists(st.integers(0, 100).map(lambda v: v / 100), min_size=1, max_size=24))
def test_any_row_of_one_slice_is_represented(row):
    pytest.importorskip("mergekit")
    fitted = fit_row(row, bounds=(0.0, 1.0))
    assert fitted is not None and [round(v, 4) for v in mergekit_row(fitted, len(row))] == row
    assert all(0.0 <= v <= 1.0 for v in (fitted if isinstance(fitted, tuple) else (fitted,)))


def test_shortest_forms():
    assert fit_row([0.5] * 8) == 0.5  # a constant stays a scalar
    assert fit_row([round(0.75 - 0.5 * i / 7, 4) for i in range(8)]) == (0.75, 0.25)
    v = [round(evaluate((0.75, 0.25, 0.75), x), 4) for x in row_positions(8)]
    assert fit_row(v) == (0.75, 0.25, 0.75)  # the middle anchor sits between layers 3 and 4
    assert fit_row([0.1, 0.9, 0.1, 0.9]) == (0.1, 0.9, 0.1, 0.9)


def test_one_gradient_for_two_slices_that_want_different_rows_is_refused():
    same_length = [(x, v) for x, v in zip(row_positions(4), (0.1, 0.2, 0.3, 0.4))]
    other = [(x, v) for x, v in zip(row_positions(4), (0.1, 0.2, 0.3, 0.5))]
    assert fit_samples(same_length + other) is None
    assert fit_samples(same_length + same_length) == (0.1, 0.4)


def test_snapping():
    assert snap(0.7035, 0.05) == 0.7 and snap(0.7035, 0.01) == 0.7 and snap(0.726, 0.05) == 0.75
    assert snap_step((0.0, 1.0)) == 0.05 and snap_step((0.0, 1.0), fine=True) == 0.01
    assert snap_step((-1.0, 2.0)) == 0.05 and snap_step((0.0, 0.01)) == 0.0005  # nearswap's t


@pytest.mark.parametrize("values, x, value", [((0.0, 1.0), 0.3, 0.6), ((0.5,), 0.5, 0.8),
                                              ((0.75, 0.25, 0.75), 0.9, 0.4)])
def test_click_insertion_passes_through_the_click(values, x, value):
    new = insert_anchor(values, x, value, (0.0, 1.0))
    assert len(new) == len(values) + 1
    assert evaluate(new, x) == pytest.approx(value, abs=2e-4)


def test_click_insertion_keeps_the_shape_elsewhere():
    new = insert_anchor((0.0, 1.0), 0.5, 0.5)  # on the line already: the line stays
    assert new == (0.0, 0.5, 1.0)


def test_presets_are_exact_per_layer_and_short():
    eight = [row_positions(8)]
    assert preset_gradient("constant", 0.3, 0.9, eight) == 0.3
    assert preset_gradient("linear", 0.2, 0.8, eight) == (0.2, 0.8)
    assert preset_gradient("linear down", 0.2, 0.8, eight) == (0.8, 0.2)
    assert preset_gradient("v", 0.0, 1.0, eight) == (1.0, 0.0, 1.0)
    assert preset_gradient("inverted v", 0.0, 1.0, eight) == (0.0, 1.0, 0.0)
    wrap = preset_gradient("wrap", 0.0, 1.0, eight)
    assert [round(evaluate(wrap, x), 4) for x in row_positions(8)] == [1, 1, 0, 0, 0, 0, 1, 1]
    for name in PRESETS:
        value = preset_gradient(name, 0.2, 0.8, eight)
        anchors = value if isinstance(value, tuple) else (value,)
        assert all(0.2 <= a <= 0.8 for a in anchors), name  # valid between layers too
    smooth = preset_gradient("smoothstep", 0.0, 1.0)  # no layers known: its own samples
    assert smooth[0] == 0.0 and smooth[-1] == 1.0 and smooth[4] == 0.5
    with pytest.raises(ValueError):
        preset_gradient("zigzag", 0, 1)


def test_invert_and_mirror():
    assert invert((0.75, 0.25), (0.0, 1.0)) == (0.25, 0.75)
    assert invert((1.5,), (-1.0, 2.0)) == (-0.5,)
    assert mirror((0.1, 0.5, 0.9)) == (0.9, 0.5, 0.1)


# --- edits and the grid's rows ------------------------------------------------------------------

def slerp_stage(t, ranges=((0, 8),)) -> Stage:
    slices = tuple(Slice((SliceSource("a", r), SliceSource("b", r))) for r in ranges)
    return Stage("slerp", slices=slices, base_model="a", parameters=Parameters({"t": t}))


RULES = (FilterRule((0.75, 0.25), "self_attn"), FilterRule((0.25, 0.75), "mlp"), FilterRule(0.5))
TOP = CurveTarget("t", "t", edits.TOP_LEVEL)


def test_rule_edits_invert_mirror_copy():
    stage = slerp_stage(RULES)
    assert edits.get_rules(edits.invert_rule(stage, edits.TOP_LEVEL, "t", 0), edits.TOP_LEVEL, "t")[0].value == \
        (0.25, 0.75)
    assert edits.get_rules(edits.mirror_rule(stage, edits.TOP_LEVEL, "t", 1), edits.TOP_LEVEL, "t")[1].value == \
        (0.75, 0.25)
    copied = edits.copy_rule_value(stage, edits.TOP_LEVEL, "t", 0, 2)
    assert edits.get_rules(copied, edits.TOP_LEVEL, "t")[2] == FilterRule((0.75, 0.25))
    inserted = edits.insert_point(stage, edits.TOP_LEVEL, "t", 0, 0.25, 0.9)
    assert len(edits.get_rules(inserted, edits.TOP_LEVEL, "t")[0].value) == 3


def layout(stage: Stage, target: CurveTarget = TOP):
    rules = edits.get_rules(stage, target.location, target.name)
    return curve_layout(stage, None, target, rules)[:2]


def test_rows_show_the_applied_values_and_who_gives_them():
    stage = slerp_stage(RULES, ranges=((0, 4), (4, 8)))
    stage = edits.set_parameter(stage, edits.ParamLocation(1), "t", (FilterRule(0.1, "mlp"),))
    rows = rule_rows(stage, TOP, RULES, *layout(stage))
    assert rows[1].values[:4] == pytest.approx([0.25, 0.25 + 0.5 / 3, 0.75 - 0.5 / 3, 0.75])
    assert rows[1].values[4:] == [0.1] * 4 and not any(c.editable for c in rows[1].cells[4:])
    assert "slice 2" in rows[1].note and "4-7" in rows[1].note
    with pytest.raises(RowError, match="edit it there"):
        set_rule_row(stage, TOP, *layout(stage), 1, [None] * 4 + [0.3] * 4)


def test_a_row_is_written_as_the_shortest_gradient():
    stage = slerp_stage(RULES)
    new = set_rule_row(stage, TOP, *layout(stage), 2, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert edits.get_rules(new, edits.TOP_LEVEL, "t")[2] == FilterRule((0.2, 0.9))
    new = set_rule_row(stage, TOP, *layout(stage), 0, [0.4] * 8)
    assert edits.get_rules(new, edits.TOP_LEVEL, "t")[0] == FilterRule(0.4, "self_attn")
    assert set_rule_row(stage, TOP, *layout(stage), 0, [None] * 8) is stage  # nothing changed
    with pytest.raises(RowError, match="valid range"):
        set_rule_row(stage, TOP, *layout(stage), 0, [1.5] + [None] * 7)


def test_a_shared_gradient_over_slices_says_when_it_cannot_give_the_row():
    stage = slerp_stage(RULES, ranges=((0, 4), (4, 8)))
    with pytest.raises(RowError, match="cannot be represented per layer: slices 1-2"):
        set_rule_row(stage, TOP, *layout(stage), 2, [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.5])
    new = set_rule_row(stage, TOP, *layout(stage), 2, [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4])
    assert edits.get_rules(new, edits.TOP_LEVEL, "t")[2].value == (0.1, 0.4)


def test_values_at_layer_lists_every_rule_in_effect():
    stage = slerp_stage(RULES)
    donors = {"a": donor("a", 8), "b": donor("b", 8)}
    plan = plan_stage(stage, donors)
    values = {(v.parameter, v.rule): v.value for v in values_at_layer(stage, plan, 7)}
    assert values == {("t", "self_attn"): 0.25, ("t", "mlp"): 0.75, ("t", "fallback"): 0.5}
    assert math.isclose(values_at_layer(stage, plan, 0)[0].value, 0.75)


def test_layers_from_ranges_number_like_the_plan():
    stage = slerp_stage(RULES, ranges=((0, 4), (2, 8)))
    assert [layer.slice_index for layer in layers_from_ranges(stage)] == [0] * 4 + [1] * 6
