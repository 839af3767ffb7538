"""Output vocabularies and vocabulary-indexed rows rebuilt to them (mergekit's rules)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from merger_gui.core.errors import DonorError, UserError  # noqa: E402
from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.synthetic import DonorShape  # noqa: E402
from merger_gui.engine.vocabulary import build_vocabulary, read_tokenizer_vocabulary  # noqa: E402

EMBED = "model.embed_tokens.weight"


def shape(vocab: int) -> DonorShape:
    return DonorShape(num_layers=2, hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=1, vocab_size=vocab)


@pytest.fixture
def donors(make_donor):
    """base (96 tokens), two finetunes adding <extra_96>/<extra_97> (98) and a short one (90)."""
    folders = {
        "base": make_donor("base", shape(96), seed=1),
        "ft1": make_donor("ft1", shape(98), seed=2, added_tokens=2),
        "ft2": make_donor("ft2", shape(98), seed=3, added_tokens=2),
        "short": make_donor("short", shape(90), seed=4),
    }
    return {name: (inspect_folder(path), path) for name, path in folders.items()}


def stage(tokenizer_yaml: str, models=("base", "ft1")):
    sources = "\n".join(f"      - {{model: {m}, layer_range: [0, 2]}}" for m in models)
    text = f"slices:\n  - sources:\n{sources}\nmerge_method: linear\nbase_model: base\n{tokenizer_yaml}\n"
    return load_recipe_text(text).stages[0]


def plan(donors, tokenizer_yaml, models=("base", "ft1")):
    return build_vocabulary(stage(tokenizer_yaml, models), {m: donors[m][0] for m in models})


def embed(donors, name):
    return load_file(donors[name][1] / "model.safetensors")[EMBED]


def test_no_tokenizer_section_means_no_vocabulary(donors):
    assert build_vocabulary(stage(""), {m: donors[m][0] for m in ("base", "ft1")}) is None


def test_read_tokenizer_vocabulary_includes_added_tokens(donors):
    tokens, added = read_tokenizer_vocabulary(donors["ft1"][1])
    assert len(tokens) == 98 and tokens["<extra_97>"] == 97 and tokens["tok5"] == 5
    assert set(added) == {"<unk>", "<s>", "</s>", "<extra_96>", "<extra_97>"}


def test_base_source_drops_the_finetunes_extra_rows(donors):
    vocabulary = plan(donors, "tokenizer_source: base")
    assert vocabulary.vocab_size == 96
    base_rows, ft_rows = vocabulary.align_all(["base", "ft1"], [embed(donors, "base"), embed(donors, "ft1")])
    assert torch.equal(base_rows, embed(donors, "base"))
    assert torch.equal(ft_rows, embed(donors, "ft1")[:96])


def test_a_token_only_one_input_has_takes_that_inputs_row(donors):
    vocabulary = plan(donors, "tokenizer_source: ft1")
    assert vocabulary.vocab_size == 98
    base_rows, _ = vocabulary.align_all(["base", "ft1"], [embed(donors, "base"), embed(donors, "ft1")])
    assert torch.equal(base_rows[:96], embed(donors, "base"))
    assert torch.equal(base_rows[96:], embed(donors, "ft1")[96:])


def test_a_token_no_input_has_gets_zeros(donors):
    vocabulary = plan(donors, "tokenizer_source: ft1")
    (alone,) = vocabulary.align_all(["base"], [embed(donors, "base")])
    assert torch.equal(alone[96:], torch.zeros(2, 8, dtype=alone.dtype))
    assert torch.equal(vocabulary.align("base", embed(donors, "base")), alone)


def test_a_token_several_non_base_inputs_have_gets_their_mean(donors):
    models = ("base", "ft1", "ft2")
    vocabulary = plan(donors, "tokenizer_source: ft1", models)
    rows = vocabulary.align_all(list(models), [embed(donors, m) for m in models])
    mean = (torch.zeros(2, 8, dtype=torch.float16) + embed(donors, "ft1")[96:] + embed(donors, "ft2")[96:]) / 2
    assert torch.equal(rows[0][96:], mean)
    assert torch.equal(rows[1], embed(donors, "ft1"))  # own rows untouched


def test_a_token_the_base_has_takes_the_bases_row(donors):
    models = ("base", "ft1", "short")
    vocabulary = plan(donors, "tokenizer_source: base", models)
    _, _, short_rows = vocabulary.align_all(list(models), [embed(donors, m) for m in models])
    assert torch.equal(short_rows[:90], embed(donors, "short"))
    assert torch.equal(short_rows[90:], embed(donors, "base")[90:96])


def test_padding_rows_get_the_mean_row(donors):
    vocabulary = plan(donors, "tokenizer: {source: base, pad_to_multiple_of: 64}")
    assert vocabulary.vocab_size == 128
    rows, _ = vocabulary.align_all(["base", "ft1"], [embed(donors, "base"), embed(donors, "ft1")])
    assert torch.equal(rows[96:], torch.mean(rows[:96], dim=0).expand(32, 8))


def test_token_overrides_zero_forced_and_model_token(donors):
    tokenizer = """tokenizer:
  source: ft1
  tokens:
    <extra_96>: {source: {kind: zero}}
    tok5: {source: {kind: model_token, model: ft1, token_id: 7}, force: true}
    <extra_97>: {source: ft1}"""
    vocabulary = plan(donors, tokenizer)
    base_rows, ft_rows = vocabulary.align_all(["base", "ft1"], [embed(donors, "base"), embed(donors, "ft1")])
    assert torch.equal(base_rows[96], torch.zeros(8, dtype=torch.float16))
    assert torch.equal(ft_rows[96], embed(donors, "ft1")[96])  # not forced: its own row stays
    assert torch.equal(base_rows[5], embed(donors, "ft1")[7]) and torch.equal(ft_rows[5], embed(donors, "ft1")[7])
    assert torch.equal(base_rows[97], embed(donors, "ft1")[97])


def test_override_from_a_model_the_stage_does_not_use_is_a_user_error(donors):
    with pytest.raises(UserError, match="which the stage does not use"):
        plan(donors, "tokenizer:\n  source: base\n  tokens:\n    tok5: {source: ft2}")


def test_union_is_deterministic_base_first(donors):
    models = ("base", "ft1", "short")
    vocabulary = plan(donors, "tokenizer_source: union", models)
    assert vocabulary.vocab_size == 98
    assert vocabulary.tokens["tok95"] == 95 and vocabulary.tokens["<extra_96>"] == 96


def test_save_writes_a_tokenizer_with_the_output_vocabulary(donors, tmp_path):
    plan(donors, "tokenizer_source: base").save(tmp_path / "out-base")
    tokens, _ = read_tokenizer_vocabulary(tmp_path / "out-base")
    assert len(tokens) == 96
    vocabulary = plan(donors, "tokenizer:\n  source: base\n  tokens:\n    <|im_start|>: {source: {kind: zero}}")
    assert vocabulary.vocab_size == 97
    vocabulary.save(tmp_path / "out-added")
    tokens, added = read_tokenizer_vocabulary(tmp_path / "out-added")
    assert tokens["<|im_start|>"] == 96 and "<|im_start|>" in added
    assert (tmp_path / "out-added" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "out-added" / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_a_donor_without_tokenizer_json_is_refused(donors):
    (donors["ft1"][1] / "tokenizer.json").unlink()
    with pytest.raises(DonorError, match="no tokenizer.json"):
        plan(donors, "tokenizer_source: base")
