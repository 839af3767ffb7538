"""Recipe YAML: loading mergekit's schema, errors with lines, saving, round-trip editing."""

from __future__ import annotations

import difflib
from dataclasses import replace

import pytest
import yaml

from merger_gui.core.errors import RecipeError
from merger_gui.core.recipe import (
    FilterRule,
    ModelEntry,
    Parameters,
    Recipe,
    Slice,
    SliceSource,
    Stage,
    TokenEmbedding,
    TokenizerSpec,
)
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe, load_recipe_text, save_recipe

SEEDS = ("rose-20b.yaml", "nyxene-11b.yaml")


def _params(**values) -> Parameters:
    return Parameters(values)


def _src(model: str, start: int, end: int, **params) -> SliceSource:
    return SliceSource(model, (start, end), _params(**params))


SLERP_T = (
    FilterRule((0, 0.5, 0.3, 0.7, 1), "self_attn"),
    FilterRule((1, 0.5, 0.7, 0.3, 0), "mlp"),
    FilterRule(0.5),
)

# A variety of recipes covering the schema; each must round-trip and satisfy mergekit.
RECIPES = {
    "passthrough": Recipe((Stage("passthrough", slices=(Slice((_src("a", 0, 16),)), Slice((_src("b", 8, 24),))),
                                 dtype="float16"),)),
    "slerp_filters": Recipe((Stage("slerp", slices=(Slice((_src("a", 0, 32), _src("b", 0, 32))),),
                                   base_model="a", parameters=_params(t=SLERP_T), dtype="bfloat16"),)),
    "per_scope_parameters": Recipe((Stage(
        "ties",
        slices=(Slice((_src("a", 0, 4, weight=0.5, density=(0.2, 0.8)), _src("base@main", 0, 4)),
                      parameters=_params(normalize=False, t=(FilterRule(1, "mlp"),)), base_model="base@main"),),
        base_model="base@main", parameters=_params(density=0.5, int8_mask=True, epsilon=1e-10, big=1.5e20),
        out_dtype="bfloat16",
    ),)),
    "models_form": Recipe((Stage(
        "linear",
        models=(ModelEntry("a", _params(weight=(FilterRule((0.3, 0.7), "self_attn"), FilterRule(1)))),
                ModelEntry("b", _params(weight=0.25)), ModelEntry("c")),
        parameters=_params(normalize=True), dtype="float32", out_dtype="float16", chat_template="chatml",
    ),)),
    "tokenizer_source": Recipe((Stage("task_arithmetic", models=(ModelEntry("a", _params(weight=1)),),
                                      base_model="b", tokenizer_source="union"),)),
    "tokenizer_section": Recipe((Stage(
        "slerp",
        slices=(Slice((_src("a", 0, 2), _src("b", 0, 2))),), base_model="a", parameters=_params(t=0.5),
        tokenizer=TokenizerSpec(
            source="union",
            tokens=(
                ("<|im_start|>", TokenEmbedding(source="b", force=True)),
                ("<|im_end|>", TokenEmbedding(source="a", kind="model_token", token="</s>")),
                ("<pad>", TokenEmbedding(kind="zero")),
                ("<x>", TokenEmbedding(source="b", kind="model_token", token_id=7)),
                ("<y>", TokenEmbedding()),
            ),
            pad_to_multiple_of=64,
        ),
    ),)),
    "tokenizer_default_source": Recipe((Stage("passthrough", slices=(Slice((_src("a", 0, 2),)),),
                                              tokenizer=TokenizerSpec(pad_to_multiple_of=8)),)),
    "tricky_strings": Recipe((Stage("passthrough", slices=(Slice((_src("on", 0, 1, label="yes"),)),
                                                           Slice((_src("1.5", 1, 2),)), Slice((_src("null", 0, 1),))),
                                    dtype="1e5"),)),
    "multi_stage": Recipe((
        Stage("passthrough", slices=(Slice((_src("x", 0, 24),)), Slice((_src("y", 8, 32),))), name="first"),
        Stage("slerp", slices=(Slice((_src("first", 0, 48), _src("z", 0, 48))),), base_model="first",
              parameters=_params(t=(0.2, 0.8)), name="second"),
    )),
    "unknown_keys": Recipe((Stage("passthrough", slices=(Slice((_src("a", 0, 2),)),),
                                  extra=Parameters({"comment": "kept", "empty": None,
                                                    "meta": Parameters({"n": 1, "l": (1, "x"), "z": None})})),)),
}  # fmt: skip


# ----------------------------------------------------------------------------- loading


def test_seed_recipes_load(seed_recipe_path):
    rose = load_recipe(seed_recipe_path("rose-20b.yaml"))
    assert len(rose.stages) == 1
    stage = rose.stages[0]
    assert stage.merge_method == "passthrough" and stage.dtype == "float16"
    assert [s.sources[0].layer_range for s in stage.slices] == [(0, 16), (8, 24), (17, 32), (25, 40)]

    nyxene = load_recipe(seed_recipe_path("nyxene-11b.yaml"))
    assert nyxene.stage_names() == ("loyal-piano-cybertron-11B", "Starling-DPOHermes-11B", "Nyxene-11B")
    t = nyxene.stages[2].parameters["t"]
    assert t[2] == FilterRule((0.75, 0.25), "self_attn")
    assert t[-1] == FilterRule(0.5)
    assert nyxene.stages[2].base_model == "loyal-piano-cybertron-11B"


def test_numbers_keep_their_types():
    stage = load_recipe_text(
        "models: [{model: a, parameters: {weight: 1, density: 0.5, g: [0, 0.5, 1], e: 1e-3, flag: true}}]\n"
        "merge_method: linear\n"
    ).stages[0]
    params = stage.models[0].parameters
    assert type(params["weight"]) is int and type(params["density"]) is float
    assert params["g"] == (0, 0.5, 1) and [type(v) for v in params["g"]] == [int, float, int]
    assert params["e"] == pytest.approx(1e-3) and params["flag"] is True


def test_yaml11_booleans_read_as_mergekit_reads_them():
    params = load_recipe_text("models: [{model: a}]\nmerge_method: linear\nparameters: {a: yes, b: 'yes', c: off}\n")
    assert dict(params.stages[0].parameters) == {"a": True, "b": "yes", "c": False}


def test_single_rule_mapping_is_a_rule_list():
    stage = load_recipe_text("models: [{model: a}]\nmerge_method: linear\nparameters:\n  t: {filter: mlp, value: 2}\n")
    assert stage.stages[0].parameters["t"] == (FilterRule(2, "mlp"),)


def test_anchors_aliases_and_merge_keys():
    text = """\
base: &base
  model: org/base
  layer_range: [0, 8]
curve: &curve [0.1, 0.9]
slices:
  - sources:
      - *base
      - <<: *base
        model: org/other
        parameters: {weight: *curve}
merge_method: slerp
base_model: org/base
parameters:
  t: *curve
"""
    stage = load_recipe_text(text).stages[0]
    assert stage.slices[0].sources == (
        SliceSource("org/base", (0, 8)),
        SliceSource("org/other", (0, 8), _params(weight=(0.1, 0.9))),
    )
    assert stage.parameters["t"] == (0.1, 0.9)
    assert stage.extra == {"base": Parameters({"model": "org/base", "layer_range": (0, 8)}), "curve": (0.1, 0.9)}


def test_unknown_top_level_keys_are_kept_in_order():
    stage = load_recipe_text("merge_method: passthrough\nzeta: 1\nslices: []\nalpha: {x: [1, {y: 2}]}\n").stages[0]
    assert list(stage.extra) == ["zeta", "alpha"]
    assert stage.extra["alpha"] == Parameters({"x": (1, Parameters({"y": 2}))})
    assert stage.slices == ()


def test_multi_document_with_empty_trailing_document():
    recipe = load_recipe_text("name: a\nmodels: [{model: x}]\nmerge_method: linear\n---\nname: b\n"
                              "models: [{model: a}]\nmerge_method: linear\n---\n")
    assert recipe.stage_names() == ("a", "b")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("slices:\n  - sources: [\nmerge_method: x\n", 3, "invalid YAML"),
        ("a: 1\n  b: 2\n", 2, "invalid YAML"),
        ("merge_method: x\nmerge_method: y\nmodels: [{model: a}]\n", 2, "invalid YAML"),
        ("models: [{model: *nothing}]\nmerge_method: x\n", 1, "invalid YAML"),
        ("models: [{model: a}]\n", 1, "merge_method is missing"),
        ("dtype: float16\n\nmerge_method: linear\n", 1, "either slices or models"),
        ("merge_method: x\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\nmodels:\n  - model: a\n",
         6, "not both"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2, 4]\n", 5,
         "layer_range must be two integers like [0, 16]"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n        layer_range: ['0', 2]\n", 5, "layer_range"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n        layer_range: 4\n", 5, "layer_range"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n        layer_range: [true, 2]\n", 5,
         "layer_range"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n", 4, "needs a layer_range"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 1]\n"
         "      - layer_range: [0, 1]\n", 6, "a source needs a model"),
        ("merge_method: x\nslices:\n  - base_model: a\n", 3, "needs sources"),
        ("merge_method: x\nslices: {a: 1}\n", 2, "slices must be a list"),
        ("merge_method: x\nmodels:\n  - parameters: {weight: 1}\n", 3, "needs a model"),
        ("merge_method: x\nmodels:\n  - model: [a]\n", 3, "model must be text"),
        ("merge_method: x\nmodels: [{model: a}]\ndtype: 16\n", 3, "dtype must be text"),
        ("merge_method: 3\nmodels: [{model: a}]\n", 1, "merge_method must be text"),
        ("merge_method: x\nmodels: [{model: a}]\nparameters:\n  t:\n", 4, "parameter t has no value"),
        ("merge_method: x\nmodels: [{model: a}]\nparameters: [1, 2]\n", 3, "parameters must be a mapping"),
        ("merge_method: x\nmodels: [{model: a}]\nparameters:\n  t: [[1], 2]\n", 4, "parameter t must be"),
        ("merge_method: x\nmodels: [{model: a}]\nparameters:\n  t:\n    - filter: mlp\n", 5, "needs a value"),
        ("merge_method: x\nmodels: [{model: a}]\nparameters:\n  t:\n    - {filter: mlp, value: {a: 1}}\n", 5,
         "must be a number"),
        ("merge_method: x\nmodels: [{model: a}]\ntokenizer:\n  pad_to_multiple_of: x\n", 4, "pad_to_multiple_of"),
        ("merge_method: x\nmodels: [{model: a}]\ntokenizer:\n  tokens:\n    t: {source: {kind: magic}}\n", 5,
         "model_token or zero"),
        ("merge_method: x\nmodels: [{model: a}]\n---\n- a\n- b\n", 4, "must be a mapping"),
        ("merge_method: x\nmodels: [{model: a}]\n---\n\njust text\n", 5, "must be a mapping"),
    ],
)
def test_errors_name_their_line(text, line, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text)
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n---\n"])
def test_empty_recipe_is_a_clear_error(text):
    with pytest.raises(RecipeError, match="recipe is empty"):
        load_recipe_text(text)


def test_unreadable_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_round_trip(name):
    recipe = RECIPES[name]
    text = dump_recipe(recipe)
    assert load_recipe_text(text) == recipe
    assert dump_recipe(load_recipe_text(text)) == text


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_pyyaml_reads_the_same_values(name):
    """mergekit reads with PyYAML (YAML 1.1); numbers, booleans and strings must not change."""
    text = dump_recipe(RECIPES[name])
    ours = [_as_plain(doc) for doc in _ruamel_docs(text)]
    assert list(yaml.safe_load_all(text)) == ours


def _ruamel_docs(text):
    from ruamel.yaml import YAML

    return list(YAML(typ="safe", pure=True).load_all(text))


def _as_plain(value):
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_plain(v) for v in value]
    return value


def test_dump_style_and_key_order():
    text = dump_recipe(RECIPES["slerp_filters"])
    assert text == (
        "slices:\n"
        "  - sources:\n"
        "      - model: a\n"
        "        layer_range: [0, 32]\n"
        "      - model: b\n"
        "        layer_range: [0, 32]\n"
        "merge_method: slerp\n"
        "base_model: a\n"
        "parameters:\n"
        "  t:\n"
        "    - filter: self_attn\n"
        "      value: [0, 0.5, 0.3, 0.7, 1]\n"
        "    - filter: mlp\n"
        "      value: [1, 0.5, 0.7, 0.3, 0]\n"
        "    - value: 0.5\n"
        "dtype: bfloat16\n"
    )
    multi = dump_recipe(RECIPES["multi_stage"])
    assert multi.startswith("name: first\nslices:\n") and multi.count("\n---\n") == 1


@pytest.mark.parametrize("name", SEEDS)
def test_seeds_save_and_reload(seed_recipe_path, tmp_path, name):
    recipe = load_recipe(seed_recipe_path(name))
    original = seed_recipe_path(name).read_text()
    assert load_recipe_text(dump_recipe(recipe)) == recipe
    assert dump_recipe(recipe, original) == original  # nothing changed: byte for byte
    written = save_recipe(recipe, tmp_path / name)
    assert (tmp_path / name).read_text() == written
    assert load_recipe(tmp_path / name) == recipe


def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("old")
    text = save_recipe(RECIPES["passthrough"], path)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.fixture(scope="module")
def merge_configuration():
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration

    return MergeConfiguration


@pytest.mark.mergekit
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_mergekit_accepts_dumped_recipes(merge_configuration, name):
    recipe = RECIPES[name]
    documents = list(yaml.safe_load_all(dump_recipe(recipe)))
    assert len(documents) == len(recipe.stages)
    for document, stage in zip(documents, recipe.stages):
        config = merge_configuration.model_validate(document)
        assert config.merge_method == stage.merge_method
        assert len(config.slices or config.models) == len(stage.slices or stage.models)
        if stage.slices:
            assert [s.layer_range for s in config.slices[0].sources] == [s.layer_range for s in stage.slices[0].sources]
            assert [str(s.model) for s in config.slices[0].sources] == [s.model for s in stage.slices[0].sources]
        assert config.out_dtype == stage.out_dtype and config.dtype == stage.dtype


@pytest.mark.mergekit
@pytest.mark.parametrize("name", SEEDS)
def test_mergekit_accepts_dumped_seeds(merge_configuration, seed_recipe_path, name):
    recipe = load_recipe(seed_recipe_path(name))
    for document in yaml.safe_load_all(dump_recipe(recipe)):
        merge_configuration.model_validate(document)


@pytest.mark.mergekit
def test_mergekit_evaluates_our_filters_like_the_model(merge_configuration):
    """The dumped rule list means the same filter/value pairs to mergekit."""
    from mergekit.config import ConditionalParameter

    stage = RECIPES["per_scope_parameters"].stages[0]
    config = merge_configuration.model_validate(yaml.safe_load(dump_recipe(Recipe((stage,)))))
    rules = config.slices[0].parameters["t"]
    assert rules == [ConditionalParameter(filter="mlp", value=1)]
    assert config.slices[0].sources[0].parameters["density"] == [0.2, 0.8]
    assert config.parameters["epsilon"] == 1e-10 and config.parameters["int8_mask"] is True


# ----------------------------------------------------------------------------- round-trip editing


def _changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def _with_source(recipe: Recipe, stage: int, slice_: int, source: int, **changes) -> Recipe:
    old_stage = recipe.stages[stage]
    old_slice = old_stage.slices[slice_]
    sources = list(old_slice.sources)
    sources[source] = replace(sources[source], **changes)
    slices = list(old_stage.slices)
    slices[slice_] = replace(old_slice, sources=tuple(sources))
    return recipe.replace_stage(stage, replace(old_stage, slices=tuple(slices)))


def test_editing_nyxene_changes_only_the_edited_value(seed_recipe_path):
    original = seed_recipe_path("nyxene-11b.yaml").read_text()
    recipe = load_recipe_text(original)
    edited = _with_source(recipe, 0, 1, 0, layer_range=(8, 30))
    text = dump_recipe(edited, original)
    assert _changed_lines(original, text) == ["-      layer_range: [8, 32]", "+      layer_range: [8, 30]"]
    assert "# fallback for rest of tensors" in text and text.startswith("# Nyxene-v2-11B")
    assert load_recipe_text(text) == edited


def test_editing_parameters_keeps_comments_and_spacing(seed_recipe_path):
    original = seed_recipe_path("nyxene-11b.yaml").read_text()
    recipe = load_recipe_text(original)
    stage = recipe.stages[2]
    rules = list(stage.parameters["t"])
    rules[2] = FilterRule((0.9, 0.1), "self_attn")
    edited = recipe.replace_stage(
        2, replace(stage, parameters=stage.parameters.with_value("t", tuple(rules)), out_dtype="float16")
    )
    text = dump_recipe(edited, original)
    assert _changed_lines(original, text) == [
        "-      value: [0.75, 0.25]",
        "+      value: [0.9, 0.1]",
        "+out_dtype: float16",
    ]
    assert "value:  [0.25, 0.75]" in text  # the user's double space, untouched
    assert load_recipe_text(text) == edited


def test_adding_and_removing_items_in_the_users_indentation(seed_recipe_path):
    original = seed_recipe_path("nyxene-11b.yaml").read_text()
    recipe = load_recipe_text(original)
    stage = recipe.stages[0]
    extra_slice = Slice((SliceSource("new/model", (2, 4)),))
    edited = recipe.replace_stage(0, replace(stage, slices=(stage.slices[0], extra_slice)))
    text = dump_recipe(edited, original)
    assert _changed_lines(original, text) == [
        "-    - model: chargoddard/loyal-piano-m7-cdpo",
        "-      layer_range: [8, 32]",
        "+    - model: new/model",
        "+      layer_range: [2, 4]",
    ]
    assert load_recipe_text(text) == edited


def test_adding_and_removing_stages(seed_recipe_path):
    original = seed_recipe_path("nyxene-11b.yaml").read_text()
    recipe = load_recipe_text(original)
    fewer = Recipe(recipe.stages[:2])
    text = dump_recipe(fewer, original)
    assert load_recipe_text(text) == fewer and text.startswith("# Nyxene-v2-11B")
    more = Recipe(recipe.stages + (replace(recipe.stages[0], name="fourth"),))
    text = dump_recipe(more, original)
    assert load_recipe_text(text) == more
    assert text.startswith(original) and text.count("---") == 3


USER_FILE = """\
# my merge
common: &common
  model: org/base   # the base
  layer_range: [0, 8]
slices:
  - sources:
      - *common
      - model: org/other
        layer_range: [0, 8]
        note: keep me     # an unknown source key
    residual_weight: 0.5
  - sources:
      - <<: *common
        layer_range: [8, 16]
merge_method: slerp
base_model: org/base
parameters:
  t: 0.5   # halfway
unknown_top: {a: 1}
"""


def test_unknown_keys_anchors_and_comments_survive_edits():
    recipe = load_recipe_text(USER_FILE)
    stage = recipe.stages[0]
    edited = _with_source(recipe, 0, 0, 1, model="org/third")
    edited = edited.replace_stage(0, replace(edited.stages[0], parameters=stage.parameters.with_value("t", 0.25)))
    text = dump_recipe(edited, USER_FILE)
    assert _changed_lines(USER_FILE, text) == [
        "-      - model: org/other",
        "+      - model: org/third",
        "-  t: 0.5   # halfway",
        "+  t: 0.25  # halfway",  # ruamel keeps the comment's column
    ]
    assert load_recipe_text(text) == edited


def test_editing_an_aliased_node_leaves_its_other_uses_alone():
    recipe = load_recipe_text(USER_FILE)
    edited = _with_source(recipe, 0, 0, 0, layer_range=(0, 4))
    text = dump_recipe(edited, USER_FILE)
    reloaded = load_recipe_text(text)
    assert reloaded == edited
    assert reloaded.stages[0].slices[1].sources[0] == SliceSource("org/base", (8, 16))
    assert "&common" in text and "# my merge" in text


def test_removing_an_unknown_top_level_key_and_a_parameter():
    recipe = load_recipe_text(USER_FILE)
    stage = recipe.stages[0]
    kept_extra = Parameters({"common": stage.extra["common"]})
    edited = recipe.replace_stage(0, replace(stage, parameters=Parameters(), extra=kept_extra))
    text = dump_recipe(edited, USER_FILE)
    assert "unknown_top" not in text and "parameters" not in text and "halfway" not in text
    assert load_recipe_text(text) == edited


def test_unreadable_original_text_is_ignored():
    recipe = RECIPES["passthrough"]
    assert dump_recipe(recipe, "not: [valid") == dump_recipe(recipe)


# ----------------------------------------------------------------------------- property


def _recipe_strategy():
    """A hypothesis strategy for recipes covering the schema (any text as names and keys)."""
    st = pytest.importorskip("hypothesis.strategies")

    names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
    maybe = lambda strategy: st.one_of(st.none(), strategy)  # noqa: E731
    numbers = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False))
    scalars = st.one_of(numbers, st.booleans(), names)
    gradients = st.lists(numbers, min_size=1, max_size=5).map(tuple)
    rules = st.lists(st.builds(FilterRule, st.one_of(scalars, gradients), maybe(names)), min_size=1, max_size=3)

    def mapping(keys, values):
        return st.lists(st.tuples(keys, values), max_size=3, unique_by=lambda p: p[0]).map(
            lambda pairs: Parameters(tuple(pairs))
        )

    params = mapping(names, st.one_of(scalars, gradients, rules.map(tuple)))
    sources = st.builds(SliceSource, names, st.tuples(st.integers(0, 80), st.integers(0, 80)), params)
    slices = st.builds(Slice, st.lists(sources, min_size=1, max_size=2).map(tuple), params, maybe(names))
    models = st.builds(ModelEntry, names, params)
    embeddings = st.one_of(
        st.builds(TokenEmbedding, maybe(names), st.none(), force=st.booleans()),
        st.builds(TokenEmbedding, names, st.just("model_token"), token=names, force=st.booleans()),
        st.builds(TokenEmbedding, names, st.just("model_token"), token_id=st.integers(0, 9)),
        st.builds(TokenEmbedding, kind=st.just("zero")),
    )
    tokens = st.lists(st.tuples(names, embeddings), max_size=2, unique_by=lambda p: p[0]).map(tuple)
    tokenizers = st.builds(TokenizerSpec, maybe(names), tokens, maybe(st.integers(1, 128)))
    known = {"name", "slices", "models", "merge_method", "base_model", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer", "chat_template"}  # fmt: skip
    extras = mapping(names.filter(lambda key: key not in known), maybe(scalars))

    @st.composite
    def stages(draw):
        use_slices = draw(st.booleans())
        return Stage(
            merge_method=draw(names),
            slices=draw(st.lists(slices, max_size=3).map(tuple)) if use_slices else None,
            models=None if use_slices else draw(st.lists(models, min_size=1, max_size=3).map(tuple)),
            base_model=draw(maybe(names)),
            parameters=draw(params),
            dtype=draw(maybe(names)),
            out_dtype=draw(maybe(names)),
            tokenizer_source=draw(maybe(names)),
            tokenizer=draw(maybe(tokenizers)),
            chat_template=draw(maybe(names)),
            name=draw(maybe(names)),
            extra=draw(extras),
        )

    return st.lists(stages(), min_size=1, max_size=3).map(lambda s: Recipe(tuple(s)))


def test_round_trip_property():
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(_recipe_strategy())
    def check(recipe):
        text = dump_recipe(recipe)
        assert load_recipe_text(text) == recipe
        assert list(yaml.safe_load_all(text)) == [_as_plain(doc) for doc in _ruamel_docs(text)]

    check()


def test_edit_round_trip_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(_recipe_strategy(), _recipe_strategy(), st.randoms())
    def check(before, after, random):
        # Edit one recipe into another that reuses some of its stages, slices reordered.
        stages = [random.choice((stage, *before.stages)) for stage in after.stages]
        after = Recipe(tuple(
            replace(stage, slices=tuple(random.sample(stage.slices, len(stage.slices)))) if stage.slices else stage
            for stage in stages
        ))  # fmt: skip
        assert load_recipe_text(dump_recipe(after, dump_recipe(before))) == after

    check()
