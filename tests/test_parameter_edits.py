"""Pure edits of curve parameters: points, rules, presets, scalar/gradient conversion."""

from __future__ import annotations

import pytest

from merger_gui.core.parameter_edits import (
    TOP_LEVEL, ParamLocation, add_point, add_rule, apply_preset, get_parameter, get_rules, move_rule,
    remove_point, remove_rule, rename_rule, set_curve_point, to_gradient, to_scalar,
)
from merger_gui.core.parameters import evaluate_parameter
from merger_gui.core.recipe import FilterRule, ModelEntry, Parameters, Slice, SliceSource, Stage


def slerp_stage(t) -> Stage:
    sources = (SliceSource("a", (0, 8)), SliceSource("b", (0, 8)))
    return Stage("slerp", slices=(Slice(sources),), base_model="a", parameters=Parameters({"t": t}))


NYXENE_T = (
    FilterRule((0.75, 0.25), "self_attn"),
    FilterRule((0.25, 0.75), "mlp"),
    FilterRule(0.5),
)


def test_set_curve_point_clamps_and_keeps_other_rules():
    stage = set_curve_point(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 1, 1, 1.7)
    assert get_rules(stage, TOP_LEVEL, "t")[1] == FilterRule((0.25, 1.0), "mlp")
    stage = set_curve_point(stage, TOP_LEVEL, "t", 0, 0, -0.2)
    assert get_rules(stage, TOP_LEVEL, "t")[0].value == (0.0, 0.25)
    stage = set_curve_point(stage, TOP_LEVEL, "t", 2, 0, 0.123456)
    assert get_rules(stage, TOP_LEVEL, "t")[2] == FilterRule(0.1235)


def test_bare_values_stay_bare():
    stage = set_curve_point(slerp_stage((0.0, 1.0)), TOP_LEVEL, "t", 0, 1, 0.5)
    assert get_parameter(stage, TOP_LEVEL, "t") == (0.0, 0.5)
    stage = set_curve_point(slerp_stage(0.3), TOP_LEVEL, "t", 0, 0, 0.4)
    assert get_parameter(stage, TOP_LEVEL, "t") == 0.4
    with pytest.raises(IndexError):
        set_curve_point(stage, TOP_LEVEL, "t", 0, 1, 0.4)


def test_add_point_resamples_the_curve():
    stage = add_point(slerp_stage((0.0, 1.0)), TOP_LEVEL, "t", 0)
    assert get_parameter(stage, TOP_LEVEL, "t") == (0.0, 0.5, 1.0)
    stage = add_point(slerp_stage(0.3), TOP_LEVEL, "t", 0)
    assert get_parameter(stage, TOP_LEVEL, "t") == (0.3, 0.3)


def test_remove_point_keeps_at_least_one():
    stage = remove_point(slerp_stage((0.0, 0.5, 1.0)), TOP_LEVEL, "t", 0, 1)
    assert get_parameter(stage, TOP_LEVEL, "t") == (0.0, 1.0)
    with pytest.raises(ValueError):
        remove_point(slerp_stage((0.2,)), TOP_LEVEL, "t", 0, 0)


def test_add_rule_goes_before_the_fallback_and_copies_its_value():
    stage = add_rule(slerp_stage(NYXENE_T), TOP_LEVEL, "t", "layernorm")
    rules = get_rules(stage, TOP_LEVEL, "t")
    assert [r.filter for r in rules] == ["self_attn", "mlp", "layernorm", None]
    assert rules[2].value == 0.5
    # A bare value becomes the fallback of a rule list.
    stage = add_rule(slerp_stage((0.1, 0.9)), TOP_LEVEL, "t", "mlp", value=(1.0, 0.0))
    assert get_parameter(stage, TOP_LEVEL, "t") == (FilterRule((1.0, 0.0), "mlp"), FilterRule((0.1, 0.9)))


def test_remove_move_rename_rules():
    stage = remove_rule(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 0)
    assert [r.filter for r in get_rules(stage, TOP_LEVEL, "t")] == ["mlp", None]
    stage = move_rule(stage, TOP_LEVEL, "t", 1, 0)
    assert [r.filter for r in get_rules(stage, TOP_LEVEL, "t")] == [None, "mlp"]
    stage = rename_rule(stage, TOP_LEVEL, "t", 1, "self_attn")
    assert [r.filter for r in get_rules(stage, TOP_LEVEL, "t")] == [None, "self_attn"]
    stage = remove_rule(remove_rule(stage, TOP_LEVEL, "t", 1), TOP_LEVEL, "t", 0)
    assert "t" not in stage.parameters
    # Naming the single fallback of a bare value needs the list form.
    stage = rename_rule(slerp_stage(0.5), TOP_LEVEL, "t", 0, "mlp")
    assert get_parameter(stage, TOP_LEVEL, "t") == (FilterRule(0.5, "mlp"),)


def test_presets_are_clamped_and_exact_over_the_layers():
    stage = apply_preset(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 1, "linear", 0.2, 1.5)
    assert get_rules(stage, TOP_LEVEL, "t")[1] == FilterRule((0.2, 1.0), "mlp")
    eight = [tuple(i / 7 for i in range(8))]
    stage = apply_preset(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 2, "constant", 0.3, 0.9, eight)
    assert get_rules(stage, TOP_LEVEL, "t")[2] == FilterRule(0.3)


def test_scalar_gradient_conversion():
    stage = to_gradient(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 2)
    assert get_rules(stage, TOP_LEVEL, "t")[2].value == (0.5, 0.5)
    stage = to_scalar(stage, TOP_LEVEL, "t", 0)
    assert get_rules(stage, TOP_LEVEL, "t")[0].value == 0.5


def test_slice_source_and_model_entry_locations():
    sources = (SliceSource("a", (0, 8)), SliceSource("b", (0, 8), Parameters({"weight": 0.3})))
    stage = Stage("linear", slices=(Slice(sources, Parameters({"t": (0.0, 1.0)})),))
    stage = set_curve_point(stage, ParamLocation(0, 1), "weight", 0, 0, 1.6)
    assert stage.slices[0].sources[1].parameters["weight"] == 1.6  # weights may exceed 1
    stage = set_curve_point(stage, ParamLocation(0), "t", 0, 0, 0.25)
    assert stage.slices[0].parameters["t"] == (0.25, 1.0)
    models = Stage("ties", models=(ModelEntry("a", Parameters({"density": 0.5})), ModelEntry("b")),
                   base_model="a")
    models = set_curve_point(models, ParamLocation(model_index=0), "density", 0, 0, 1.4)
    assert models.models[0].parameters["density"] == 1.0
    models = add_rule(models, ParamLocation(model_index=1), "density", None, value=(0.2, 0.8))
    assert models.models[1].parameters["density"] == (0.2, 0.8)


def test_edited_curve_evaluates_like_mergekit():
    stage = apply_preset(slerp_stage(NYXENE_T), TOP_LEVEL, "t", 0, "v", 0.0, 1.0)
    value = evaluate_parameter("t", "model.layers.2.self_attn.q_proj.weight", 0.25, (stage.parameters,))
    assert value == pytest.approx(0.5)
