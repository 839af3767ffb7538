"""Pure edits of a mergekit-moe recipe (no Qt, no torch): authoring one from the donors at hand."""

from __future__ import annotations

import pytest

from merger_gui.core.errors import RecipeError
from merger_gui.core.moe_edits import (
    add_expert, move_expert, new_moe, remove_expert, set_architecture, set_base_model, set_dtype,
    set_experts_per_token, set_expert_prompts, set_expert_source, set_gate_mode,
)
from merger_gui.core.moe_recipe import MoeExpert, dump_moe, load_moe_text, moe_problems, output_architecture


def test_a_new_recipe_starts_from_the_donors_or_empty():
    recipe = new_moe(["a", "b", "a"])
    assert recipe.base_model == "a" and [e.source_model for e in recipe.experts] == ["a", "b"]
    assert recipe.experts_per_token == 2 and recipe.gate_mode == "hidden"
    assert "expert 1 has no positive_prompts (gate_mode hidden needs them)" in moe_problems(recipe)
    empty = new_moe([])
    assert moe_problems(empty) == ["choose a base model", "add an expert: mergekit-moe needs at least one"]
    assert moe_problems(empty, {}) == moe_problems(empty)  # no "base model  is not resolved"
    with pytest.raises(RecipeError, match="choose a base model and add an expert first"):
        dump_moe(empty)
    assert new_moe(["a"]).experts_per_token == 1


def test_expert_edits_add_remove_and_move_either_list():
    recipe = add_expert(new_moe(["a", "b"]), "c")
    assert [e.source_model for e in recipe.experts] == ["a", "b", "c"]
    assert [e.source_model for e in move_expert(recipe, 2, 0).experts] == ["c", "a", "b"]
    assert [e.source_model for e in move_expert(recipe, 0, 9).experts] == ["b", "c", "a"]  # clamped
    assert [e.source_model for e in remove_expert(recipe, 1).experts] == ["a", "c"]

    shared = add_expert(add_expert(recipe, "s", shared=True), "t", shared=True)
    assert [e.source_model for e in shared.shared_experts] == ["s", "t"] and shared.experts == recipe.experts
    shared = set_expert_prompts(move_expert(shared, 1, 0, shared=True), 0, ["x", " "], ["y"], shared=True)
    assert shared.shared_experts[0] == MoeExpert("t", ("x",), ("y",))
    shared = set_expert_source(remove_expert(shared, 1, shared=True), 0, "b", shared=True)
    assert shared.shared_experts == (MoeExpert("b", ("x",), ("y",)),)


def test_settings_edits_and_what_they_change():
    recipe = new_moe(["a", "b"])
    for i, prompt in enumerate(("story", "code")):
        recipe = set_expert_prompts(recipe, i, [prompt], [])
    assert moe_problems(recipe) == []
    assert "experts_per_token (3) is more than the 2 experts" in moe_problems(set_experts_per_token(recipe, 3))
    assert set_base_model(recipe, "b").base_model == "b"
    assert set_dtype(recipe, "float16").dtype == "float16" and set_dtype(recipe, "").dtype is None
    random = set_gate_mode(set_expert_prompts(recipe, 0, [], []), "random")
    assert moe_problems(random) == []  # random gates read no prompts
    with pytest.raises(RecipeError, match="unknown gate_mode 'fast'"):
        set_gate_mode(recipe, "fast")
    qwen = set_architecture(add_expert(recipe, "a", shared=True), "qwen")
    assert "Qwen MoE needs the shared expert's positive_prompts" in moe_problems(qwen)[0]
    qwen = set_expert_prompts(qwen, 0, ["chat"], [], shared=True)
    assert output_architecture(qwen) == "Qwen MoE" and set_architecture(qwen, None).architecture is None
    assert load_moe_text(dump_moe(qwen)) == qwen
