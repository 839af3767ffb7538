"""Stage settings and stage list edits: method conversion, base/dtype/tokenizer, add/remove/rename."""

from __future__ import annotations

from dataclasses import replace

from merger_gui.core import slice_edits, stage_edits
from merger_gui.core.methods import METHODS
from merger_gui.core.recipe import FilterRule, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage, TokenizerSpec
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.validation import validate_recipe


def rose() -> Stage:
    ranges = (("T", 0, 16), ("N", 8, 24), ("T", 17, 32), ("N", 25, 40))
    return Stage("passthrough", slices=tuple(Slice((SliceSource(m, (s, e)),)) for m, s, e in ranges), dtype="float16")


def test_passthrough_to_slerp_pairs_each_slice_with_the_other_donor():
    slerp = stage_edits.set_merge_method(rose(), "slerp")
    assert slerp.merge_method == "slerp" and slerp.base_model == "T"
    assert slerp.parameters["t"] == 0.5
    assert [[(s.model, s.layer_range) for s in sl.sources] for sl in slerp.slices] == [
        [("T", (0, 16)), ("N", (0, 16))], [("N", (8, 24)), ("T", (8, 24))],
        [("T", (17, 32)), ("N", (17, 32))], [("N", (25, 40)), ("T", (25, 40))]]
    back = stage_edits.set_merge_method(slerp, "passthrough")
    assert back == rose()  # first sources kept, base model and t gone


def test_pairing_fits_the_partner_and_keeps_an_existing_t():
    stage = Stage("passthrough", slices=(Slice((SliceSource("big", (30, 40)),)),), parameters=Parameters({"t": 0.3}))
    slerp = stage_edits.set_merge_method(stage, "slerp", ("big", "small"), {"small": 32})
    assert slerp.slices[0].sources[1] == SliceSource("small", (22, 32))
    assert slerp.parameters["t"] == 0.3


def test_single_donor_and_empty_stage_conversions():
    empty = stage_edits.set_merge_method(Stage("passthrough", slices=()), "slerp", ("a", "b"))
    assert empty.base_model == "a" and empty.slices == () and empty.parameters["t"] == 0.5
    lone = stage_edits.set_merge_method(Stage("passthrough", slices=(Slice((SliceSource("a", (0, 4)),)),)), "slerp")
    assert len(lone.slices[0].sources) == 1  # no second donor to pair with
    ties = stage_edits.set_merge_method(stage_edits.set_merge_method(rose(), "slerp"), "ties")
    assert ties.merge_method == "ties" and len(ties.slices[0].sources) == 2
    assert "t" not in ties.parameters and ties.base_model == "T"


def test_settings_edits_write_yaml():
    stage = stage_edits.set_base_model(rose(), "Noro")
    stage = stage_edits.set_dtype(stage, "bfloat16")
    stage = stage_edits.set_out_dtype(stage, "float16")
    stage = stage_edits.set_tokenizer_source(stage, "union")
    text = dump_recipe(Recipe((stage,)))
    assert "base_model: Noro" in text and "dtype: bfloat16" in text and "out_dtype: float16" in text
    assert "tokenizer_source: union" in text
    assert load_recipe_text(text).stages[0] == stage
    cleared = stage_edits.set_tokenizer_source(stage_edits.set_dtype(stage, None), None)
    assert cleared.dtype is None and cleared.tokenizer_source is None
    spec = Stage("slerp", tokenizer=TokenizerSpec("base"))
    assert stage_edits.set_tokenizer_source(spec, "union").tokenizer.source == "union"


def test_sources_add_remove_and_linked_slices():
    stage = slice_edits.add_linked_slice(Stage("slerp", slices=()), ("a", "b"), 6, 10, num_layers={"a": 8, "b": 8})
    assert [s.layer_range for s in stage.slices[0].sources] == [(6, 8), (6, 8)]
    stage = slice_edits.add_linked_slice(Stage("slerp", slices=()), ("a", "b"), 30, 40, num_layers={"b": 32})
    assert [s.layer_range for s in stage.slices[0].sources] == [(30, 40), (22, 32)]
    stage = slice_edits.add_source(rose(), 1, "X", num_layers=20)
    assert stage.slices[1].sources[1] == SliceSource("X", (4, 20))
    stage = slice_edits.remove_source(stage, 1, 0)
    assert stage.slices[1].sources == (SliceSource("X", (4, 20)),)
    assert slice_edits.remove_source(stage, 1, 0) == stage  # the last source stays


def test_add_rename_remove_stages():
    recipe = stage_edits.add_stage(Recipe((rose(),)))
    assert recipe.stage_names() == ("stage-1", "stage-2")
    assert recipe.stages[1].slices == () and recipe.stages[1].merge_method == "passthrough"
    second = slice_edits.add_slice(recipe.stages[1], "stage-1", 0, 10)
    recipe = recipe.replace_stage(1, stage_edits.set_tokenizer_source(stage_edits.set_base_model(second, "stage-1"),
                                                                      "stage-1"))
    renamed = stage_edits.rename_stage(recipe, 0, "rose")
    assert renamed.stage_names() == ("rose", "stage-2")
    later = renamed.stages[1]
    assert later.slices[0].sources[0].model == "rose" and later.base_model == "rose"
    assert later.tokenizer_source == "rose"
    assert stage_edits.rename_stage(renamed, 0, "stage-2") == renamed  # taken
    assert stage_edits.rename_stage(renamed, 0, "  ") == renamed
    assert stage_edits.remove_stage(renamed, 0).stage_names() == ("stage-2",)
    assert stage_edits.remove_stage(Recipe((rose(),)), 0) == Recipe((rose(),))
    assert stage_edits.stage_donors(renamed, 1, ("Z", "rose")) == ("rose", "Z")


def weights(stage: Stage) -> list[list[float | None]]:
    return [[s.parameters.get("weight") for s in sl.sources] for sl in stage.slices]


def test_switch_to_a_weighted_method_gives_each_model_an_equal_share():
    slerp = stage_edits.set_merge_method(rose(), "slerp")
    linear = stage_edits.set_merge_method(slerp, "linear")
    assert weights(linear) == [[0.5, 0.5]] * 4  # normalized: an even average
    task_arithmetic = stage_edits.set_merge_method(slerp, "task_arithmetic")
    assert weights(task_arithmetic) == [[None, 1.0], [1.0, None]] * 2  # the base T takes no weight
    given = SliceSource("x", (0, 4), Parameters({"weight": 0.7}))
    three = Stage("ties", slices=(Slice((SliceSource("b", (0, 4)), given, SliceSource("y", (0, 4)),
                                         SliceSource("z", (0, 4)))),), base_model="b")
    dare = stage_edits.set_merge_method(three, "dare_ties")
    assert weights(dare) == [[None, 0.7, 0.3333, 0.3333]]  # deltas average; a weight given is kept
    shared = stage_edits.set_merge_method(replace(slerp, parameters=Parameters({"weight": 0.4})), "linear")
    assert weights(shared) == [[None, None]] * 4 and shared.parameters["weight"] == 0.4
    models = Stage("linear", models=(ModelEntry("a"), ModelEntry("b", Parameters({"weight": 2.0}))))
    multislerp = stage_edits.set_merge_method(models, "multislerp")
    assert [e.parameters.get("weight") for e in multislerp.models] == [0.5, 2.0]


def test_every_method_converts_two_donor_recipes_without_errors():
    donors = {"T": resolve_donor("profile:llama-2-13b"), "N": resolve_donor("profile:llama-2-13b")}
    for start in (rose(), stage_edits.set_merge_method(rose(), "slerp")):
        for method in METHODS:
            stage = stage_edits.set_merge_method(start, method, ("T", "N"))
            errors = [f for f in validate_recipe(Recipe((stage,)), donors) if f.severity == "error"]
            if method == "model_stock":  # needs a third donor
                assert {f.code for f in errors} == {"too-few-models"}
            else:
                assert errors == [], (start.merge_method, method, errors[0].message)
    three = stage_edits.set_merge_method(rose(), "model_stock", ("T", "N", "X"))
    assert [s.model for s in three.slices[1].sources] == ["N", "T", "X"]


def test_nuslerp_drops_a_base_it_cannot_use_and_nearswap_gets_a_threshold():
    slerp = stage_edits.set_merge_method(rose(), "slerp")
    nuslerp = stage_edits.set_merge_method(slerp, "nuslerp")
    assert nuslerp.base_model is None and weights(nuslerp) == [[0.5, 0.5]] * 4
    three = Stage("ties", slices=(Slice((SliceSource("b", (0, 4)), SliceSource("x", (0, 4)),
                                         SliceSource("y", (0, 4)))),), base_model="b")
    assert stage_edits.set_merge_method(three, "nuslerp").base_model == "b"
    assert stage_edits.set_merge_method(rose(), "nearswap").parameters["t"] == 0.0001


def test_multislerp_drops_a_base_that_would_leave_one_model_to_interpolate():
    slerp = stage_edits.set_merge_method(rose(), "slerp")
    multislerp = stage_edits.set_merge_method(slerp, "multislerp")
    assert multislerp.base_model is None and weights(multislerp) == [[0.5, 0.5]] * 4
    three = Stage("ties", slices=(Slice((SliceSource("b", (0, 4)), SliceSource("x", (0, 4)),
                                         SliceSource("y", (0, 4)))),), base_model="b")
    assert stage_edits.set_merge_method(three, "multislerp").base_model == "b"


def test_switching_between_slerp_and_nearswap_resets_t():
    curves = Parameters({"t": (FilterRule((0.0, 1.0), "self_attn"), FilterRule(0.5))})
    slerp = replace(stage_edits.set_merge_method(rose(), "slerp"), parameters=curves)
    nearswap = stage_edits.set_merge_method(slerp, "nearswap")
    assert nearswap.parameters["t"] == 0.0001  # a ratio's curves mean nothing as a distance
    assert stage_edits.set_merge_method(nearswap, "slerp").parameters["t"] == 0.5
    assert stage_edits.set_merge_method(slerp, "nuslerp").parameters.get("t") is None
