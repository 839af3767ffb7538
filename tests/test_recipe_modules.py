"""The ``modules:`` form (mergekit 0.1.5's per-module syntax): read, planned, validated and saved
like mergekit does for the one ``default`` module; the three forms that mean the same plan the same."""

from __future__ import annotations

import textwrap

import pytest

from merger_gui.core.errors import RecipeError
from merger_gui.core.plan import plan_stage
from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe import ModuleForm
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text
from merger_gui.core.validation import validate_recipe

DONORS = {name: load_profile("llama-2-7b") for name in ("a", "b", "c")}  # 32 layers

MODELS_FORM = """\
    models:
      - {model: b, parameters: {weight: 0.6, density: 0.5}}
      - {model: c, parameters: {weight: 0.4, density: [0.2, 0.8]}}
    merge_method: ties
    base_model: a
    parameters: {normalize: true}
"""
SLICES_FORM = """\
    slices:
      - sources:
          - {model: b, layer_range: [0, 32], parameters: {weight: 0.6, density: 0.5}}
          - {model: c, layer_range: [0, 32], parameters: {weight: 0.4, density: [0.2, 0.8]}}
          - {model: a, layer_range: [0, 32]}
    merge_method: ties
    base_model: a
    parameters: {normalize: true}
"""
MODULES_FORM = """\
    # one module, as mergekit's per-module syntax writes it
    modules:
      default:
        slices:
          - sources:
              - {model: b, layer_range: [0, 32], parameters: {weight: 0.6, density: 0.5}}
              - {model: c, layer_range: [0, 32], parameters: {weight: 0.4, density: [0.2, 0.8]}}
              - {model: a, layer_range: [0, 32]}
        parameters: {normalize: true}   # the module's parameters
    merge_method: ties
    base_model: a
"""
MODULE_MODELS_FORM = """\
    modules:
      default:
        models:
          - {model: b, parameters: {weight: 0.6, density: 0.5}}
          - {model: c, parameters: {weight: 0.4, density: [0.2, 0.8]}}
    merge_method: ties
    base_model: a
    parameters: {normalize: true}
"""


def _load(text: str):
    return load_recipe_text(textwrap.dedent(text))


def _planned(text: str) -> list[tuple]:
    plan = plan_stage(_load(text).stages[0], DONORS)
    return [(t.name, t.shape, t.dtype, t.sources, t.layer, t.x, t.parameters) for t in plan.tensors]


def test_modules_form_is_read_as_the_default_module():
    stage = _load(MODULES_FORM).stages[0]
    assert stage.module == ModuleForm("default", stage.module.parameters)
    assert dict(stage.module.parameters) == {"normalize": True}
    assert len(stage.slices) == 1 and stage.models is None


@pytest.mark.parametrize("text", [SLICES_FORM, MODULES_FORM, MODULE_MODELS_FORM])
def test_forms_meaning_the_same_plan_identically(text):
    assert _planned(text) == _planned(MODELS_FORM)


def test_module_parameters_rank_between_slice_and_stage():
    text = MODULES_FORM.replace("merge_method: ties", "merge_method: ties\n    parameters: {normalize: false}")
    planned = plan_stage(_load(text).stages[0], DONORS).tensors
    assert all(t.parameters["normalize"] is True for t in planned)


def test_modules_form_validates_clean_and_round_trips_with_comments():
    text = textwrap.dedent(MODULES_FORM)
    recipe = load_recipe_text(text)
    assert [f for f in validate_recipe(recipe, DONORS) if f.is_error] == []
    assert dump_recipe(recipe, text) == text
    fresh = dump_recipe(recipe)
    assert "modules:\n  default:\n    slices:" in fresh and load_recipe_text(fresh) == recipe


def test_an_edited_modules_recipe_keeps_its_comments():
    text = textwrap.dedent(MODULES_FORM)
    recipe = load_recipe_text(text)
    stage = recipe.stages[0]
    edited = stage.__class__(**{**stage.__dict__, "base_model": "b"})
    saved = dump_recipe(recipe.replace_stage(0, edited), text)
    assert "# the module's parameters" in saved and "# one module" in saved and "base_model: b" in saved
    assert load_recipe_text(saved).stages[0].module == stage.module


@pytest.mark.parametrize("modules, message", [
    ("{vision_tower: {models: [{model: a}]}}", "only the single `default` module"),
    ("{default: {models: [{model: a}]}, text: {models: [{model: b}]}}", "only the single `default` module"),
    ("{default: {parameters: {t: 1}}}", "the module default needs either slices or models"),
])
def test_unsupported_modules_are_refused_in_one_line(modules, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe_text(f"modules: {modules}\nmerge_method: linear\n")


def test_modules_beside_slices_is_refused():
    with pytest.raises(RecipeError, match="one of models, slices or modules"):
        load_recipe_text("modules: {default: {models: [{model: a}]}}\nmodels: [{model: b}]\nmerge_method: linear\n")
