"""Validation reuses the stages a designer already planned: the same findings, each stage planned once."""

from __future__ import annotations

import merger_gui.core.validation as validation
from merger_gui.core.partial_plan import plan_partially
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.resolve import resolve_donor

NYXENE_DONORS = ("fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo",
                 "berkeley-nest/Starling-LM-7B-alpha", "openaccess-ai-collective/DPOpenHermes-7B")


def test_given_plans_give_the_same_findings_without_planning_again(seed_recipe_path, monkeypatch):
    text = seed_recipe_path("nyxene-11b.yaml").read_text().replace("Starling-NeuralHermes-11B",
                                                                   "Starling-DPOHermes-11B")
    recipe = load_recipe_text(text)
    donors = {name: resolve_donor("profile:mistral-7b") for name in NYXENE_DONORS}
    partial = plan_partially(recipe, donors)
    assert len(partial.stage_plans) == len(recipe.stages) == 3
    expected = validation.validate_recipe(recipe, donors)
    planned: list[int] = []
    real_plan_stage = validation.plan_stage
    monkeypatch.setattr(validation, "plan_stage", lambda *a: planned.append(a[2]) or real_plan_stage(*a))
    assert validation.validate_recipe(recipe, donors, plans=partial.stage_plans) == expected
    assert planned == []
    validation.validate_recipe(recipe, donors)
    assert sorted(planned) == [0, 1, 2]
