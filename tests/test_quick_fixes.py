"""Quick fixes: a finding that names its fix carries it as data, and doing it clears the finding."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from merger_gui.core.profiles import load_profile
from merger_gui.core.quick_fixes import apply_fix
from merger_gui.core.recipe import FilterRule, Parameters, Recipe, Slice, SliceSource, Stage
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.validation import Finding, validate_recipe

LLAMA = load_profile("llama-2-7b")
NYXENE = Path(__file__).resolve().parent.parent / "resources" / "recipes" / "nyxene-11b.yaml"
NYXENE_DONORS = {m: load_profile("mistral-7b") for m in (
    "fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo", "berkeley-nest/Starling-LM-7B-alpha",
    "openaccess-ai-collective/DPOpenHermes-7B")}


def pair(method: str, base: str | None = "a", b: int = 32, **parameters) -> Recipe:
    slice_ = Slice((SliceSource("a", (0, 32)), SliceSource("b", (0, b))))
    return Recipe((Stage(method, slices=(slice_,), base_model=base, parameters=Parameters(parameters)),))


def single(*ranges: tuple[int, int]) -> Recipe:
    """A passthrough stage of model ``a`` with one slice per range."""
    return Recipe((Stage("passthrough", slices=tuple(Slice((SliceSource("a", r),)) for r in ranges)),))


def rules(*pairs) -> tuple[FilterRule, ...]:
    return tuple(FilterRule(value, flt) for flt, value in pairs)


BIG_VOCAB = {"a": LLAMA, "b": replace(LLAMA, vocab_size=32002)}
CASES = {
    "unknown-stage": (load_recipe_text(NYXENE.read_text()), NYXENE_DONORS,
                      "point the source at stage 'Starling-DPOHermes-11B'"),
    "filter-no-match": (load_recipe_text(NYXENE.read_text()), NYXENE_DONORS,
                        "rename filter 'modelnorm' to 'model.norm'"),
    "no-base-model": (load_recipe_text(NYXENE.read_text()), NYXENE_DONORS,
                      "add `base_model: fblgit/una-cybertron-7b-v2`"),
    "missing-base-model": (pair("ties", None, density=0.5, weight=0.5), {"a": LLAMA, "b": LLAMA},
                           "add `base_model: a`"),
    "reversed-range": (single((0, 2), (8, 2)), {"a": LLAMA}, "write it as [2, 8]"),
    "unknown-method": (pair("slerpp", t=0.5), {"a": LLAMA, "b": LLAMA}, "use merge_method 'slerp'"),
    "vocab-size-mismatch": (pair("slerp", t=0.5), BIG_VOCAB, "add `tokenizer_source: base`"),
    "shadowed-rule": (pair("slerp", t=rules(("attn", 0.5), ("self_attn", 0.2), (None, 0.1))),
                      {"a": LLAMA, "b": LLAMA}, "put 'self_attn' before 'attn'"),
    "multislerp-lone-model": (pair("multislerp", weight=0.5), {"a": LLAMA, "b": LLAMA}, "remove base_model"),
}


def first(findings: list[Finding], code: str) -> Finding:
    return next(f for f in findings if f.code == code)


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_named_fix_is_data_and_clears_its_finding(code):
    recipe, donors, label = CASES[code]
    before = validate_recipe(recipe, donors)
    finding = first(before, code)
    assert finding.fix is not None and finding.fix.label == label
    after = validate_recipe(apply_fix(recipe, finding.fix), donors)
    assert all((f.code, f.stage, f.slice, f.source) != (code, finding.stage, finding.slice, finding.source)
               for f in after)
    assert sum(f.is_error for f in after) <= sum(f.is_error for f in before) - finding.is_error


def test_the_misnamed_stage_fix_points_every_reference_at_the_stage():
    recipe, donors, _ = CASES["unknown-stage"]
    fixed = apply_fix(recipe, first(validate_recipe(recipe, donors), "unknown-stage").fix)
    assert "Starling-NeuralHermes-11B" not in {m for s in fixed.stages for m in s.referenced_models}
    assert fixed.stages[2].slices[0].sources[1].model == "Starling-DPOHermes-11B"
    assert fixed.stages[:2] == recipe.stages[:2]


def test_a_fix_goes_to_json_and_leaves_a_changed_recipe_alone():
    recipe, donors, _ = CASES["filter-no-match"]
    finding = first(validate_recipe(recipe, donors), "filter-no-match")
    data = json.loads(json.dumps(asdict(finding)))
    assert data["fix"]["label"] == "rename filter 'modelnorm' to 'model.norm'"
    shorter = Recipe(recipe.stages[:1])  # the stage the fix is about is gone
    assert apply_fix(shorter, finding.fix) == shorter


def test_findings_without_a_named_fix_carry_none():
    assert first(validate_recipe(single((0, 40)), {"a": LLAMA}), "range-past-end").fix is None
