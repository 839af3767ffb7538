"""The layer plan (core.plan) and parameter evaluation (core.parameters)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from merger_gui.core.errors import DonorError, RecipeError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.parameters import evaluate_parameter, interpolate_gradient, slice_position
from merger_gui.core.plan import plan_recipe, plan_stage, stage_order
from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe import (
    FilterRule, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage,
)
from merger_gui.core.synthetic import DonorShape

LLAMA_13B = load_profile("llama-2-13b")
LLAMA_7B = load_profile("llama-2-7b")


def src(model: str, start: int, end: int, **parameters) -> SliceSource:
    return SliceSource(model, (start, end), Parameters(parameters))


def sl(*sources: SliceSource, **parameters) -> Slice:
    return Slice(tuple(sources), Parameters(parameters))


def rules(*pairs) -> tuple[FilterRule, ...]:
    return tuple(FilterRule(value, flt) for flt, value in pairs)


def rose() -> Stage:
    ranges = [("Thorns-13B", 0, 16), ("Noromaid-13B", 8, 24), ("Thorns-13B", 17, 32), ("Noromaid-13B", 25, 40)]
    return Stage("passthrough", slices=tuple(sl(src(m, a, b)) for m, a, b in ranges), dtype="float16")


@pytest.fixture(scope="module")
def rose_plan():
    return plan_stage(rose(), {"Thorns-13B": LLAMA_13B, "Noromaid-13B": LLAMA_13B})


def test_rose_output_layers_map_to_donor_layers(rose_plan):
    assert rose_plan.num_layers == 62
    assert rose_plan.params == 19_994_362_880
    expected = {0: ("Thorns-13B", 0), 15: ("Thorns-13B", 15), 16: ("Noromaid-13B", 8), 31: ("Noromaid-13B", 23),
                32: ("Thorns-13B", 17), 46: ("Thorns-13B", 31), 47: ("Noromaid-13B", 25), 61: ("Noromaid-13B", 39)}
    for index, (model, layer) in expected.items():
        (source,) = rose_plan.layers[index].sources
        assert (source.model, source.layer) == (model, layer)
    assert rose_plan.seams == (16, 32, 47)
    assert rose_plan.config_donor == "Thorns-13B"


def test_rose_tensors_are_renumbered_and_non_layer_tensors_come_from_first_and_last_slice(rose_plan):
    by_name = {t.name: t for t in rose_plan.tensors}
    q = by_name["model.layers.16.self_attn.q_proj.weight"]
    assert [(s.model, s.tensor) for s in q.sources] == [("Noromaid-13B", "model.layers.8.self_attn.q_proj.weight")]
    assert q.shape == (5120, 5120) and q.dtype == "F16"
    assert by_name["model.embed_tokens.weight"].sources[0].model == "Thorns-13B"
    assert by_name["lm_head.weight"].sources[0].model == "Noromaid-13B"
    assert by_name["model.norm.weight"].sources[0].model == "Noromaid-13B"
    assert "model.layers.62.mlp.up_proj.weight" not in by_name


def test_rose_donor_usage(rose_plan):
    usage = {u.model: u for u in rose_plan.donor_usage}
    thorns, noromaid = usage["Thorns-13B"], usage["Noromaid-13B"]
    assert thorns.skipped == (16, *range(32, 40)) and thorns.repeated == ()
    assert noromaid.skipped == (*range(8), 24)
    assert thorns.used_once == (*range(16), *range(17, 32))


def test_overlapping_slices_repeat_layers():
    stage = Stage("passthrough", slices=(sl(src("a", 0, 8)), sl(src("a", 4, 12))))
    (usage,) = plan_stage(stage, {"a": LLAMA_7B}).donor_usage
    assert usage.repeated == (4, 5, 6, 7)
    assert usage.used_once == (0, 1, 2, 3, 8, 9, 10, 11)
    assert usage.skipped == tuple(range(12, 32))


def t_of(plan, name: str) -> float:
    return next(t.parameters["t"] for t in plan.tensors if t.name == name)


def test_gradients_restart_in_every_slice_and_non_layer_tensors_take_the_first_value():
    t = rules(("self_attn", (0.75, 0.25)), ("mlp", (0, 0.5, 0.3, 0.7, 1)), (None, (0.2, 0.9)))
    stage = Stage("slerp", slices=(sl(src("a", 0, 4), src("b", 0, 4)), sl(src("a", 4, 8), src("b", 4, 8))),
                  base_model="a", parameters=Parameters({"t": t}))
    plan = plan_stage(stage, {"a": LLAMA_7B, "b": LLAMA_7B})
    attn = [t_of(plan, f"model.layers.{i}.self_attn.q_proj.weight") for i in range(8)]
    mlp = [t_of(plan, f"model.layers.{i}.mlp.up_proj.weight") for i in range(8)]
    assert attn == pytest.approx([0.75, 0.58333, 0.41667, 0.25] * 2, abs=1e-4)
    assert mlp == pytest.approx([0, 0.43333, 0.56667, 1] * 2, abs=1e-4)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert t_of(plan, name) == pytest.approx(0.2)


def test_pre_weights_read_the_first_slice_and_post_weights_the_last():
    first, last = sl(src("a", 0, 2), src("b", 0, 2), t=0.1), sl(src("a", 2, 4), src("b", 2, 4), t=0.9)
    stage = Stage("slerp", slices=(first, last), base_model="a")
    plan = plan_stage(stage, {"a": LLAMA_7B, "b": LLAMA_7B})
    assert t_of(plan, "model.embed_tokens.weight") == 0.1
    assert t_of(plan, "model.norm.weight") == 0.9 and t_of(plan, "lm_head.weight") == 0.9


def test_a_later_listed_stage_used_by_an_earlier_one_is_planned_first():
    outer = Stage("slerp", slices=(sl(src("inner", 0, 48), src("c", 0, 48)),), base_model="inner",
                  parameters=Parameters({"t": 0.5}), name="outer")
    inner = Stage("passthrough", slices=(sl(src("a", 0, 24)), sl(src("b", 8, 32))), name="inner")
    recipe = Recipe((outer, inner))
    c = replace(LLAMA_7B, num_layers=48)  # facts only: shapes of its layers are not consulted past 32
    assert stage_order(recipe) == (1, 0)
    plan = plan_recipe(recipe, {"a": LLAMA_7B, "b": LLAMA_7B, "c": c})
    assert [s.name for s in plan.stages] == ["inner", "outer"]
    assert plan.stages[0].output.num_layers == 48
    assert plan.final.config_donor == "inner"
    assert plan.final.layers[40].sources[0].layer == 40


def test_stage_order_rejects_cycles_and_duplicate_names():
    a = Stage("passthrough", slices=(sl(src("y", 0, 4)),), name="x")
    b = Stage("passthrough", slices=(sl(src("x", 0, 4)),), name="y")
    with pytest.raises(RecipeError, match="cycle"):
        stage_order(Recipe((a, b)))
    with pytest.raises(RecipeError, match="two stages"):
        stage_order(Recipe((a, replace(b, name="x"))))


def test_models_form_equals_the_slices_form():
    models = Stage("linear", models=(ModelEntry("a", Parameters({"weight": 0.3})),
                                     ModelEntry("b", Parameters({"weight": 0.7}))))
    slices = Stage("linear", slices=(sl(src("a", 0, 32, weight=0.3), src("b", 0, 32, weight=0.7)),))
    donors = {"a": LLAMA_7B, "b": LLAMA_7B}
    from_models, from_slices = plan_stage(models, donors), plan_stage(slices, donors)
    assert from_models.layers == from_slices.layers
    assert from_models.tensors == from_slices.tensors
    weights = {s.model: s.parameters["weight"] for s in from_models.tensors[5].sources}
    assert weights == {"a": 0.3, "b": 0.7}


def test_models_form_adds_the_base_model_as_a_source():
    stage = Stage("task_arithmetic", models=(ModelEntry("b", Parameters({"weight": 1.0})),), base_model="a")
    plan = plan_stage(stage, {"a": LLAMA_7B, "b": LLAMA_7B})
    assert [s.model for s in plan.layers[0].sources] == ["b", "a"]
    base_source = next(s for s in plan.tensors[3].sources if s.model == "a")
    assert "weight" not in base_source.parameters  # non-base parameters skip the base


def test_tied_donor_in_last_slice_gets_its_embeddings_as_lm_head(make_donor):
    untied = inspect_folder(make_donor("untied"))
    tied = inspect_folder(make_donor("tied", DonorShape(tie_word_embeddings=True)))
    stage = Stage("passthrough", slices=(sl(src("u", 0, 2)), sl(src("t", 2, 4))), base_model="u")
    plan = plan_stage(stage, {"u": untied, "t": tied})
    head = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert [(s.model, s.tensor) for s in head.sources] == [("t", "model.embed_tokens.weight")]
    assert head.note and "ties" in head.note


def test_missing_donor_is_a_donor_error():
    with pytest.raises(DonorError, match="b"):
        plan_stage(Stage("passthrough", slices=(sl(src("a", 0, 4)), sl(src("b", 0, 4)))), {"a": LLAMA_7B})


# --- core.parameters -------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ((0.75, 0.25), [0.75, 0.58333, 0.41667, 0.25]),
    ((0, 0.5, 0.3, 0.7, 1), [0, 0.43333, 0.56667, 1]),
])
def test_gradient_examples_from_the_compat_doc(values, expected):
    got = [interpolate_gradient(values, slice_position(k, 4)) for k in range(4)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_slice_position_of_a_single_layer_is_one():
    assert slice_position(0, 1) == 1.0
    assert interpolate_gradient((0.2, 0.8), slice_position(0, 1)) == pytest.approx(0.8)


def test_scope_precedence_source_over_slice_over_stage():
    source, slice_, stage = Parameters({"t": 0.1}), Parameters({"t": 0.2}), Parameters({"t": 0.3})
    assert evaluate_parameter("t", "x.mlp", 0.0, (source, slice_, stage)) == 0.1
    assert evaluate_parameter("t", "x.mlp", 0.0, (Parameters(), slice_, stage)) == 0.2
    assert evaluate_parameter("t", "x.mlp", 0.0, (Parameters(), Parameters(), stage)) == 0.3
    assert evaluate_parameter("t", "x.mlp", 0.0, (Parameters(),), default=0.5) == 0.5


def test_first_matching_rule_wins():
    spec = Parameters({"t": rules(("attn", 0.1), ("self_attn", 0.2), ("*", 0.3), (None, 0.4))})
    assert evaluate_parameter("t", "model.layers.0.self_attn.q_proj.weight", 0.0, (spec,)) == 0.1
    assert evaluate_parameter("t", "model.layers.0.mlp.up_proj.weight", 0.0, (spec,)) == 0.3


def test_a_scope_whose_rules_match_nothing_falls_through():
    slice_ = Parameters({"t": rules(("mlp", 0.9))})
    stage = Parameters({"t": rules(("self_attn", 0.1), (None, 0.5))})
    assert evaluate_parameter("t", "layers.0.self_attn.k_proj.weight", 0.0, (slice_, stage)) == 0.1
    assert evaluate_parameter("t", "layers.0.mlp.up_proj.weight", 0.0, (slice_, stage)) == 0.9
    empty = Parameters({"t": ()})
    assert evaluate_parameter("t", "anything", 0.0, (empty, stage)) == 0.5
    assert evaluate_parameter("t", "anything", 0.0, (slice_,), default=None) is None


def test_rule_values_are_gradients_read_at_x():
    spec = Parameters({"t": rules(("self_attn", (0.0, 1.0)))})
    assert evaluate_parameter("t", "a.self_attn.b", 0.25, (spec,)) == pytest.approx(0.25)
