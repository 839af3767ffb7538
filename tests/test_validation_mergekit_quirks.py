"""Warnings where mergekit silently ignores what the user wrote: keys outside its schema,
parameters the method does not read, a ``model:`` prefixed tokenizer source, a base_model
spelled differently from the same model in the slices."""

from __future__ import annotations

import textwrap

from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text
from merger_gui.core.validation import Finding, validate_recipe

LLAMA = load_profile("llama-2-7b")


def findings(text: str, models: tuple[str, ...] = ("a", "b", "c")) -> list[Finding]:
    return validate_recipe(load_recipe_text(textwrap.dedent(text)), {m: LLAMA for m in models})


def only(found: list[Finding], code: str) -> Finding:
    matching = [f for f in found if f.code == code]
    assert len(matching) == 1, found
    return matching[0]


SOURCE_REVISION = """\
    slices:
      - sources:
          - model: a
            layer_range: [0, 32]
            revision: refs/pr/3   # mergekit drops this
          - model: b
            layer_range: [0, 32]
        residual_weight: 0.5
    merge_method: slerp
    base_model: a
    parameters:
      t: 0.5
"""


def test_revision_inside_a_source_names_the_model_at_revision_form():
    found = findings(SOURCE_REVISION)
    revision = next(f for f in found if f.key == "revision")
    assert revision.severity == "warning" and revision.code == "unknown-key"
    assert (revision.slice, revision.source) == (0, 0)
    assert "`model: a@REVISION`" in revision.message


def test_unknown_slice_key_is_warned_and_kept_on_save():
    text = textwrap.dedent(SOURCE_REVISION)
    found = findings(text)
    residual = next(f for f in found if f.key == "residual_weight")
    assert residual.slice == 0 and residual.source is None and "never uses it" in residual.message
    recipe = load_recipe_text(text)
    assert dump_recipe(recipe, text) == text
    fresh = dump_recipe(recipe)
    assert "revision: refs/pr/3" in fresh and "residual_weight: 0.5" in fresh
    assert load_recipe_text(fresh) == recipe


def test_typo_in_a_models_entry_key_gets_a_suggestion():
    found = findings("""\
        models:
          - model: a
            paramters: {weight: 0.5}
          - model: b
            parameters: {weight: 0.5}
        merge_method: linear
    """)
    finding = only(found, "unknown-key")
    assert finding.source == 0 and "did you mean 'parameters'" in finding.message


def test_parameter_the_method_does_not_have_is_warned():
    found = findings("""\
        slices:
          - sources:
              - {model: a, layer_range: [0, 32]}
              - {model: b, layer_range: [0, 32]}
        merge_method: slerp
        base_model: a
        parameters:
          t: 0.5
          embed_slerp: true
    """)
    finding = only(found, "unknown-parameter")
    assert finding.key == "parameters.embed_slerp" and "slerp has no parameter 'embed_slerp'" in finding.message


def test_weight_gradient_on_model_stock_is_warned_per_model():
    found = findings("""\
        models:
          - model: b
            parameters: {weight: [0.2, 0.8]}
          - model: c
        merge_method: model_stock
        base_model: a
    """)
    finding = only(found, "unknown-parameter")
    assert finding.source == 0 and "weighs the models itself" in finding.message


def test_known_parameters_raise_no_warning():
    found = findings("""\
        models:
          - {model: b, parameters: {weight: 0.5, density: 0.5}}
          - {model: c, parameters: {weight: 0.5, density: 0.5}}
        merge_method: ties
        base_model: a
        parameters: {normalize: true, int8_mask: true}
    """)
    assert not [f for f in found if f.code in ("unknown-parameter", "unknown-key")]


def test_tokenizer_source_with_model_prefix_says_drop_it():
    found = findings("""\
        models:
          - {model: a}
          - {model: b}
        merge_method: linear
        parameters: {weight: 1.0}
        tokenizer_source: model:b
    """)
    finding = only(found, "tokenizer-source-prefix")
    assert "`tokenizer_source: b`" in finding.message
    assert not [f for f in found if f.code == "tokenizer-source-not-in-stage"]


def test_base_model_spelled_differently_from_the_slices_is_warned():
    found = findings("""\
        slices:
          - sources:
              - {model: /home/m/a, layer_range: [0, 32]}
              - {model: /home/m/b, layer_range: [0, 32]}
        merge_method: slerp
        base_model: //home/m/a/
        parameters: {t: 0.5}
    """, models=("/home/m/a", "/home/m/b", "//home/m/a/"))
    finding = only(found, "base-model-spelling")
    assert "'/home/m/a'" in finding.message and "'//home/m/a/'" in finding.message


def test_same_spelling_is_not_warned():
    found = findings("""\
        slices:
          - sources:
              - {model: a, layer_range: [0, 32]}
              - {model: b, layer_range: [0, 32]}
        merge_method: slerp
        base_model: a
        parameters: {t: 0.5}
    """)
    assert not [f for f in found if f.code == "base-model-spelling"]
