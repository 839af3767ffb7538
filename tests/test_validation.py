"""validate_recipe: every check has a stable code, a clear message and a location."""

from __future__ import annotations

from dataclasses import replace

import pytest

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe import (
    FilterRule, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage, TokenEmbedding, TokenizerSpec,
)
from merger_gui.core.synthetic import DonorShape
from merger_gui.core.validation import Finding, validate_recipe

LLAMA = load_profile("llama-2-7b")  # 32 layers, vocab 32000, untied
MISTRAL = load_profile("mistral-7b")


def src(model: str, start: int, end: int, **parameters) -> SliceSource:
    return SliceSource(model, (start, end), Parameters(parameters))


def sl(*sources: SliceSource, base: str | None = None, **parameters) -> Slice:
    return Slice(tuple(sources), Parameters(parameters), base)


def one_stage(method: str = "passthrough", slices: tuple[Slice, ...] | None = None, **fields) -> Recipe:
    return Recipe((Stage(method, slices=slices, **fields),))


def rules(*pairs) -> tuple[FilterRule, ...]:
    return tuple(FilterRule(value, flt) for flt, value in pairs)


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, findings
    return matching[0]


def test_clean_passthrough_has_no_errors():
    recipe = one_stage(slices=(sl(src("a", 0, 16)), sl(src("b", 8, 32))), base_model="a")
    assert validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}) == []


def test_reversed_range_is_an_error_with_the_fix():
    recipe = one_stage(slices=(sl(src("a", 0, 8)), sl(src("a", 3, 1))))
    finding = only(validate_recipe(recipe, {"a": LLAMA}), "reversed-range")
    assert finding.severity == "error"
    assert (finding.stage, finding.slice, finding.source, finding.key) == (0, 1, 0, "layer_range")
    assert "[1, 3]" in finding.message
    assert finding.location == "stage 1 › slice 2 › source 1"


def test_range_past_the_donor_end_and_negative_start():
    recipe = one_stage(slices=(sl(src("a", -1, 8)), sl(src("a", 24, 40))))
    findings = validate_recipe(recipe, {"a": LLAMA})
    assert "32 layers" in only(findings, "range-past-end").message
    assert only(findings, "negative-layer").slice == 0


def test_range_check_is_skipped_without_donor_information():
    recipe = one_stage(slices=(sl(src("a", 24, 400)),))
    assert "range-past-end" not in codes(validate_recipe(recipe, {}))


def test_empty_slice_is_a_warning():
    recipe = one_stage(slices=(sl(src("a", 0, 8)), sl(src("a", 8, 8))))
    finding = only(validate_recipe(recipe, {"a": LLAMA}), "empty-slice")
    assert finding.severity == "warning" and finding.slice == 1


def test_passthrough_vocab_mismatch_unless_a_tokenizer_section_is_given():
    big = replace(LLAMA, vocab_size=32002)
    slices = (sl(src("a", 0, 16)), sl(src("b", 8, 32)))
    finding = only(validate_recipe(one_stage(slices=slices, base_model="a"), {"a": LLAMA, "b": big}),
                   "passthrough-vocab-mismatch")
    assert "32000" in finding.message and "32002" in finding.message and "tokenizer_source: base" in finding.message
    fixed = one_stage(slices=slices, base_model="a", tokenizer_source="base")
    assert "passthrough-vocab-mismatch" not in codes(validate_recipe(fixed, {"a": LLAMA, "b": big}))


def test_slerp_vocab_mismatch_suggests_tokenizer_source_base():
    big = replace(LLAMA, vocab_size=32002)
    recipe = one_stage("slerp", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                       parameters=Parameters({"t": 0.5}))
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": big}), "vocab-size-mismatch")
    assert "add `tokenizer_source: base`" in finding.message
    with_tokenizer = replace(recipe.stages[0], tokenizer=TokenizerSpec("union"))
    assert "vocab-size-mismatch" not in codes(validate_recipe(Recipe((with_tokenizer,)), {"a": LLAMA, "b": big}))


def test_tied_donor_in_last_slice_says_we_copy_its_embeddings(make_donor):
    untied = inspect_folder(make_donor("untied"))
    tied = inspect_folder(make_donor("tied", DonorShape(tie_word_embeddings=True)))
    recipe = one_stage(slices=(sl(src("u", 0, 2)), sl(src("t", 2, 4))), base_model="u")
    finding = only(validate_recipe(recipe, {"u": untied, "t": tied}), "tied-embeddings-last")
    assert finding.severity == "warning" and finding.slice == 1
    assert "copy" in finding.message and "lm_head" in finding.message
    reversed_roles = one_stage(slices=(sl(src("t", 0, 2)), sl(src("u", 2, 4))), base_model="u")
    assert "tied-embeddings-last" not in codes(validate_recipe(reversed_roles, {"u": untied, "t": tied}))


def test_missing_base_model_warns_which_donor_gives_the_config():
    recipe = one_stage(slices=(sl(src("first", 0, 16)), sl(src("second", 8, 32))))
    finding = only(validate_recipe(recipe, {"first": LLAMA, "second": LLAMA}), "no-base-model")
    assert finding.severity == "warning" and "first" in finding.message and "second" not in finding.message
    single = one_stage(slices=(sl(src("first", 0, 16)), sl(src("first", 8, 32))))
    assert validate_recipe(single, {"first": LLAMA}) == []


def test_without_base_nuslerp_and_multislerp_are_not_told_to_add_one():
    for method in ("nuslerp", "multislerp"):
        recipe = one_stage(method, (sl(src("a", 0, 32), src("b", 0, 32)),), parameters=Parameters({"weight": 0.5}))
        finding = only(validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}), "no-base-model")
        assert "add `base_model" not in finding.message and f"change how {method} merges" in finding.message


@pytest.mark.parametrize("field, value", [
    ("hidden_size", 5120), ("num_heads", 40), ("num_kv_heads", 8), ("intermediate_size", 13824), ("head_dim", 64),
])
def test_architecture_mismatch_names_both_donors_and_values(field, value):
    other = replace(LLAMA, **{field: value})
    recipe = one_stage(slices=(sl(src("a", 0, 16)), sl(src("b", 8, 32))), base_model="a")
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": other}), "architecture-mismatch")
    assert finding.key == field
    assert f"a has {getattr(LLAMA, field)}" in finding.message and f"b has {value}" in finding.message


def nyxene() -> Recipe:
    def passthrough(name: str, a: str, b: str) -> Stage:
        return Stage("passthrough", slices=(sl(src(a, 0, 24)), sl(src(b, 8, 32))), dtype="bfloat16", name=name)

    t = rules(("lm_head", (0.75,)), ("embed_tokens", (0.75,)), ("self_attn", (0.75, 0.25)),
              ("mlp", (0.25, 0.75)), ("layernorm", (0.5, 0.5)), ("modelnorm", (0.75,)), (None, 0.5))
    pair = sl(src("loyal-piano-cybertron-11B", 0, 48), src("Starling-NeuralHermes-11B", 0, 48))
    final = Stage("slerp", slices=(pair,),
                  base_model="loyal-piano-cybertron-11B", parameters=Parameters({"t": t}), dtype="bfloat16",
                  name="Nyxene-11B")
    return Recipe((passthrough("loyal-piano-cybertron-11B", "org/cybertron", "org/loyal-piano"),
                   passthrough("Starling-DPOHermes-11B", "org/starling", "org/dpo-hermes"), final))


NYXENE_DONORS = {m: MISTRAL for m in ("org/cybertron", "org/loyal-piano", "org/starling", "org/dpo-hermes")}


def test_nyxene_filter_that_matches_nothing_suggests_the_real_name():
    findings = validate_recipe(nyxene(), NYXENE_DONORS, {"Starling-NeuralHermes-11B": "no such donor"})
    finding = only(findings, "filter-no-match")
    assert finding.severity == "warning" and finding.stage == 2 and finding.key == "parameters.t[5].filter"
    assert "'modelnorm'" in finding.message
    assert "model.norm.weight gets 0.5" in finding.message  # the fallback it gets instead
    assert "did you mean 'model.norm'" in finding.message


def test_nyxene_misnamed_stage_is_an_error_suggesting_the_stage_name():
    findings = validate_recipe(nyxene(), NYXENE_DONORS, {"Starling-NeuralHermes-11B": "no such donor"})
    finding = only(findings, "unknown-stage")
    assert finding.is_error and (finding.stage, finding.slice, finding.source) == (2, 0, 1)
    assert "'Starling-DPOHermes-11B'" in finding.message
    assert finding.location == "stage 'Nyxene-11B' › slice 1 › source 2"
    assert "donor-unavailable" not in codes(findings)  # reported once, as the stage typo


def test_fixed_nyxene_has_no_errors():
    recipe = nyxene()
    stage = recipe.stages[2]
    fixed_slice = sl(src("loyal-piano-cybertron-11B", 0, 48), src("Starling-DPOHermes-11B", 0, 48))
    recipe = recipe.replace_stage(2, replace(stage, slices=(fixed_slice,)))
    assert not [f for f in validate_recipe(recipe, NYXENE_DONORS) if f.is_error]


def test_unresolvable_donor_is_an_error_reported_once():
    recipe = Recipe((Stage("passthrough", slices=(sl(src("org/gone", 0, 8)),), name="one"),
                     Stage("passthrough", slices=(sl(src("org/gone", 0, 8)),), name="two")))
    findings = validate_recipe(recipe, {}, {"org/gone": "donor org/gone: repository not found"})
    finding = only(findings, "donor-unavailable")
    assert finding.message == "donor org/gone: repository not found" and finding.stage == 0


def test_fallback_first_shadows_every_later_rule():
    t = rules((None, 0.5), ("self_attn", 0.2), ("mlp", 0.8))
    recipe = one_stage("slerp", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                       parameters=Parameters({"t": t}))
    shadowed = [f for f in validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}) if f.code == "shadowed-rule"]
    assert [f.key for f in shadowed] == ["parameters.t[1]", "parameters.t[2]"]
    assert all(f.severity == "warning" and "fallback" in f.message for f in shadowed)


def test_a_filter_contained_in_a_later_one_shadows_it():
    t = rules(("attn", 0.5), ("self_attn", 0.2), (None, 0.1))
    recipe = one_stage("slerp", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                       parameters=Parameters({"t": t}))
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}), "shadowed-rule")
    assert finding.key == "parameters.t[1]" and "'self_attn' before 'attn'" in finding.message


def test_t_outside_unit_interval_everywhere_it_can_be_written():
    t = rules(("self_attn", (0.0, 1.5)), ("mlp", -0.1), (None, 0.5))
    recipe = one_stage("slerp", (sl(src("a", 0, 32), src("b", 0, 32), t=(0.2, 2.0)),), base_model="a",
                       parameters=Parameters({"t": t}))
    out = [f for f in validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}) if f.code == "value-out-of-range"]
    assert [(f.slice, f.key) for f in out] == [
        (None, "parameters.t[0].value[1]"), (None, "parameters.t[1].value"), (0, "parameters.t[1]")]
    assert all(f.is_error for f in out)


def test_nearswap_t_is_a_distance_and_zero_warns():
    def findings(t):
        recipe = one_stage("nearswap", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                           parameters=Parameters({"t": t}))
        return validate_recipe(recipe, {"a": LLAMA, "b": LLAMA})

    assert not {"value-out-of-range", "nearswap-zero-t"} & set(codes(findings(2.5)))  # no [0, 1] cap here
    assert "value-out-of-range" in codes(findings(-0.1))
    zero = only(findings((0.0, 0.01)), "nearswap-zero-t")
    assert zero.severity == "warning" and zero.key == "parameters.t[0]" and "NaN" in zero.message


def test_parameters_of_newer_methods_are_type_and_range_checked():
    recipe = one_stage("karcher", (sl(src("a", 0, 32), src("b", 0, 32)),),
                       parameters=Parameters({"max_iter": 0, "tol": "small"}))
    found = {f.key: f.code for f in validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}) if f.is_error}
    assert found == {"parameters.max_iter": "value-out-of-range", "parameters.tol": "not-a-number"}
    sce = one_stage("sce", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                    parameters=Parameters({"select_topk": 1.5, "int8_mask": "yes"}))
    found = {f.key: f.code for f in validate_recipe(sce, {"a": LLAMA, "b": LLAMA}) if f.is_error}
    assert found == {"parameters.select_topk": "value-out-of-range", "parameters.int8_mask": "not-a-boolean"}


def test_della_density_and_epsilon_must_stay_inside_the_unit_interval():
    def findings(density, epsilon):
        recipe = one_stage("della", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                           parameters=Parameters({"weight": 1.0, "density": density, "epsilon": epsilon}))
        return validate_recipe(recipe, {"a": LLAMA, "b": LLAMA})

    assert "della-epsilon" not in codes(findings(0.5, 0.2))
    assert "della-epsilon" not in codes(findings(1.0, 0.5))  # density 1 keeps everything, draws nothing
    error = only(findings(0.9, 0.15), "della-epsilon")
    assert error.is_error and "0.9 ± epsilon 0.15" in error.message and error.key == "parameters.epsilon"
    assert "della-epsilon" in codes(findings(0.1, 0.1))


def test_an_optional_base_must_still_be_a_source_of_the_slice():
    for method in ("nuslerp", "multislerp"):
        recipe = one_stage(method, (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="c",
                           parameters=Parameters({"weight": 0.5}))
        found = only(validate_recipe(recipe, {"a": LLAMA, "b": LLAMA, "c": LLAMA}), "base-not-in-slice")
        assert found.is_error and found.slice == 0 and method in found.message


def test_multislerp_with_a_base_and_one_other_model_warns_it_returns_that_model():
    def stage(base, *models):
        return one_stage("multislerp", (sl(*(src(m, 0, 32) for m in models)),), base_model=base,
                         parameters=Parameters({"weight": 0.5}))

    found = only(validate_recipe(stage("a", "a", "b"), {"a": LLAMA, "b": LLAMA}), "multislerp-lone-model")
    assert not found.is_error and "'a'" in found.message and found.key == "base_model"
    assert "multislerp-lone-model" not in codes(validate_recipe(stage(None, "a", "b"), {"a": LLAMA, "b": LLAMA}))
    three = validate_recipe(stage("a", "a", "b", "c"), {"a": LLAMA, "b": LLAMA, "c": LLAMA})
    assert "multislerp-lone-model" not in codes(three)


def test_passthrough_with_two_sources_and_slerp_with_one():
    two = one_stage(slices=(sl(src("a", 0, 8), src("b", 0, 8)),), base_model="a")
    assert "passthrough-sources" in codes(validate_recipe(two, {}))
    one = one_stage("slerp", (sl(src("a", 0, 8)),), base_model="a", parameters=Parameters({"t": 0.5}))
    assert "slerp-sources" in codes(validate_recipe(one, {}))


def test_slerp_of_a_model_with_itself_is_refused():
    same = one_stage("slerp", (sl(src("a", 0, 8), src("a", 8, 16)),), base_model="a",
                     parameters=Parameters({"t": 0.5}))
    found = [f for f in validate_recipe(same, {"a": LLAMA}) if f.code == "duplicate-source"]
    assert len(found) == 1 and found[0].is_error and "'a'" not in found[0].message and "a appears" in found[0].message
    distinct = one_stage("slerp", (sl(src("a", 0, 8), src("b", 0, 8)),), base_model="a",
                         parameters=Parameters({"t": 0.5}))
    assert "duplicate-source" not in codes(validate_recipe(distinct, {"a": LLAMA, "b": LLAMA}))


def test_slerp_without_t_anywhere():
    recipe = one_stage("slerp", (sl(src("a", 0, 8), src("b", 0, 8)),), base_model="a")
    finding = only(validate_recipe(recipe, {}), "missing-parameter")
    assert finding.key == "parameters.t" and finding.is_error


def test_t_rules_that_leave_tensors_without_a_value():
    t = rules(("self_attn", 0.3), ("mlp", 0.7))
    recipe = one_stage("slerp", (sl(src("a", 0, 32), src("b", 0, 32)),), base_model="a",
                       parameters=Parameters({"t": t}))
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}), "missing-parameter")
    assert "fallback" in finding.message and "e.g. model.embed_tokens.weight" in finding.message


def test_methods_needing_a_base_and_base_outside_the_slice():
    no_base = one_stage("slerp", (sl(src("a", 0, 8), src("b", 0, 8)),), parameters=Parameters({"t": 0.5}))
    assert "missing-base-model" in codes(validate_recipe(no_base, {}))
    outside = one_stage("slerp", (sl(src("a", 0, 8), src("b", 0, 8)),), base_model="c",
                        parameters=Parameters({"t": 0.5}))
    assert only(validate_recipe(outside, {}), "base-not-in-slice").key == "base_model"


def test_sources_of_unequal_length():
    recipe = one_stage("slerp", (sl(src("a", 0, 8), src("b", 0, 6)),), base_model="a",
                       parameters=Parameters({"t": 0.5}))
    assert only(validate_recipe(recipe, {}), "unequal-source-lengths").slice == 0


def test_unknown_method_suggests_the_closest():
    finding = only(validate_recipe(one_stage("lineer", (sl(src("a", 0, 8)),)), {}), "unknown-method")
    assert "'linear'" in finding.message and finding.key == "merge_method"


def test_stage_cycle_and_duplicate_names_become_findings():
    cycle = Recipe((Stage("passthrough", slices=(sl(src("y", 0, 4)),), name="x"),
                    Stage("passthrough", slices=(sl(src("x", 0, 4)),), name="y")))
    finding = only(validate_recipe(cycle, {}), "stage-cycle")
    assert finding.stage is None and "cycle" in finding.message
    duplicate = Recipe((Stage("passthrough", slices=(sl(src("a", 0, 4)),), name="x"),
                        Stage("passthrough", slices=(sl(src("a", 0, 4)),), name="x")))
    assert only(validate_recipe(duplicate, {"a": LLAMA}), "duplicate-stage-name").stage == 1


def test_unknown_keys_and_dtypes():
    stage = Stage("passthrough", slices=(sl(src("a", 0, 8)),), dtype="bfloat17", out_dtype="float16",
                  extra=Parameters({"merge_methd": "slerp"}))
    findings = validate_recipe(Recipe((stage,)), {"a": LLAMA})
    unknown = only(findings, "unknown-key")
    assert unknown.severity == "warning" and unknown.key == "merge_methd" and "'merge_method'" in unknown.message
    assert only(findings, "unknown-dtype").key == "dtype"


def test_linear_needs_a_weight_for_every_model():
    recipe = Recipe((Stage("linear", models=(ModelEntry("a", Parameters({"weight": 1.0})), ModelEntry("b"))),))
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": LLAMA}), "missing-parameter")
    assert finding.source == 1 and "b" in finding.message and finding.key == "parameters.weight"
    weighted = Recipe((Stage("linear", models=(ModelEntry("a"), ModelEntry("b")),
                             parameters=Parameters({"weight": 0.5})),))
    assert "missing-parameter" not in codes(validate_recipe(weighted, {"a": LLAMA, "b": LLAMA}))


def test_tokenizer_source_must_be_a_model_of_the_stage():
    recipe = one_stage(slices=(sl(src("a", 0, 8)),), tokenizer_source="elsewhere")
    assert only(validate_recipe(recipe, {"a": LLAMA}), "tokenizer-source-not-in-stage").key == "tokenizer_source"
    token = TokenEmbedding(source="elsewhere", kind="model_token", token="<|im_start|>")
    per_token = one_stage(slices=(sl(src("a", 0, 8)),), tokenizer=TokenizerSpec("base", (("<|im_start|>", token),)))
    assert only(validate_recipe(per_token, {"a": LLAMA}), "tokenizer-source-not-in-stage").key == \
        "tokenizer.tokens.<|im_start|>.source"
    fine = one_stage(slices=(sl(src("a", 0, 8)),), tokenizer_source="a")
    assert validate_recipe(fine, {"a": LLAMA}) == []


def test_broken_recipes_never_raise():
    broken = Recipe((Stage("passthrough"), Stage("slerp", slices=(Slice(()),)), Stage("", models=())))
    findings = validate_recipe(broken, {})
    assert {"no-models", "no-sources", "unknown-method"} <= set(codes(findings))
    assert validate_recipe(Recipe(), {})[0].code == "empty-recipe"


def test_findings_are_ordered_by_stage_then_slice():
    recipe = Recipe((
        Stage("passthrough", slices=(sl(src("a", 0, 8)), sl(src("a", 5, 2))), name="first", extra=Parameters({"x": 1})),
        Stage("passthrough", slices=(sl(src("a", 3, 1)),), name="second"),
    ))
    findings = validate_recipe(recipe, {"a": LLAMA})
    positions = [(f.stage, -1 if f.slice is None else f.slice) for f in findings]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert findings[0].code == "unknown-key"


def test_models_form_with_different_layer_counts():
    stage = Stage("linear", models=(ModelEntry("a"), ModelEntry("b")), parameters=Parameters({"weight": 1.0}))
    recipe = Recipe((stage,))
    finding = only(validate_recipe(recipe, {"a": LLAMA, "b": replace(LLAMA, num_layers=40)}), "layer-count-mismatch")
    assert "a 32" in finding.message and "b 40" in finding.message
