"""Hazardous recipes: a one-line error before any tensor is read, or a correct model.

Never a traceback, a half-written folder or a silently wrong model. Driven through the CLI
(``python -m merger_gui merge``: one ``error:`` line on stderr, exit status 1, no output or
partial folder) and through :func:`run_merge` (a one-line UserError on the first step).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from merger_gui.core.errors import UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.synthetic import DonorShape, write_donor
from merger_gui.core.validation import validate_recipe
from merger_gui.engine.run import run_merge

SHAPE = DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=96)


def _shape(**changes) -> DonorShape:
    return DonorShape(**{**SHAPE.__dict__, **changes})


SLERP_AB = "base_model: '{A}'\nparameters: {t: 0.5}\nslices:\n - sources: [{model: '{A}', layer_range: [0, 6]}, "
# name → (recipe, text the error line must contain)
HAZARDS: dict[str, tuple[str, str]] = {
    "reversed_range": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [3, 1]}]",
                       "reversed"),
    "negative_range": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [-1, 3]}]",
                       "below layer 0"),
    "end_past_donor": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3]}]\n"
                       " - sources: [{model: '{B}', layer_range: [3, 9]}]", "ends past the 6 layers"),
    "float_range": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0.5, 3]}]",
                    "two integers"),
    "only_empty_ranges": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [2, 2]}]",
                          "no layers"),
    "passthrough_vocab_sizes": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3]}]"
                                "\n - sources: [{model: '{V98}', layer_range: [3, 6]}]", "vocabulary sizes"),
    "hidden_size_mismatch": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3]}]\n"
                             " - sources: [{model: '{H96}', layer_range: [3, 6]}]", "hidden size differs"),
    "head_count_mismatch": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3]}]\n"
                            " - sources: [{model: '{HEADS}', layer_range: [3, 6]}]", "head count differs"),
    "qwen2_then_llama_layers": ("merge_method: passthrough\nslices:\n - sources: [{model: '{QWEN}', "
                                "layer_range: [0, 3]}]\n - sources: [{model: '{A}', layer_range: [3, 6]}]",
                                "lacks self_attn.k_proj.bias"),
    "missing_tensor_slerp": (f"merge_method: slerp\n{SLERP_AB}{{model: '{{MISS}}', layer_range: [0, 6]}}]",
                             "has no tensor for model.layers.3.mlp.up_proj.weight"),
    "missing_tensor_passthrough": ("merge_method: passthrough\nslices:\n - sources: [{model: '{MISS}', "
                                   "layer_range: [0, 6]}]", "layer 3 of"),
    "missing_tensor_linear": ("merge_method: linear\nmodels:\n - {model: '{A}', parameters: {weight: 1}}\n"
                              " - {model: '{MISS}', parameters: {weight: 1}}", "mlp.up_proj.weight"),
    "corrupt_shard": ("merge_method: passthrough\nslices:\n - sources: [{model: '{CORRUPT}', layer_range: [0, 6]}]",
                      "past the end of the file"),
    "duplicate_stage_names": ("name: s\nmerge_method: passthrough\nslices:\n - sources: [{model: '{A}', "
                              "layer_range: [0, 3]}]\n---\nname: s\nmerge_method: passthrough\nslices:\n - sources: "
                              "[{model: '{B}', layer_range: [0, 3]}]\n---\nmerge_method: passthrough\nslices:\n"
                              " - sources: [{model: s, layer_range: [0, 3]}]", "both named 's'"),
    "stage_cycle": ("name: a\nmerge_method: passthrough\nslices:\n - sources: [{model: b, layer_range: [0, 3]}]\n---\n"
                    "name: b\nmerge_method: passthrough\nslices:\n - sources: [{model: a, layer_range: [0, 3]}]",
                    "cycle"),
    "stage_uses_itself": ("name: a\nmerge_method: passthrough\nslices:\n - sources: [{model: a, layer_range: [0, 3]}]",
                          "its own output"),
    "slerp_three_sources": (f"merge_method: slerp\n{SLERP_AB}{{model: '{{B}}', layer_range: [0, 6]}}, "
                            "{model: '{C}', layer_range: [0, 6]}]", "exactly two"),
    "slerp_three_models": ("merge_method: slerp\nbase_model: '{A}'\nparameters: {t: 0.5}\nmodels:\n"
                           " - model: '{B}'\n - model: '{C}'", "exactly two"),
    "model_stock_two_models": ("merge_method: model_stock\nbase_model: '{A}'\nmodels:\n - model: '{B}'",
                               "at least two other models"),
    "nuslerp_one_model": ("merge_method: nuslerp\nmodels:\n - {model: '{B}', parameters: {weight: 1}}",
                          "exactly two models besides the base"),
    "linear_all_zero_weights": ("merge_method: linear\nmodels:\n - {model: '{A}', parameters: {weight: 0}}\n"
                                " - {model: '{B}', parameters: {weight: 0}}", "sum to zero"),
    "task_arithmetic_weights_cancel": ("merge_method: task_arithmetic\nbase_model: '{A}'\nparameters: "
                                       "{normalize: true}\nmodels:\n - {model: '{B}', parameters: {weight: -0.5}}\n"
                                       " - {model: '{C}', parameters: {weight: 0.5}}", "sum to zero"),
    "t_above_one": ("merge_method: slerp\nbase_model: '{A}'\nparameters: {t: 1.5}\nslices:\n - sources: "
                    "[{model: '{A}', layer_range: [0, 6]}, {model: '{B}', layer_range: [0, 6]}]", "outside [0, 1]"),
    "weight_text": ("merge_method: linear\nmodels:\n - {model: '{A}', parameters: {weight: abc}}\n"
                    " - {model: '{B}', parameters: {weight: 1}}", "weight must be a finite number"),
    "scale_text": ("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3], "
                   "parameters: {scale: x}}]", "scale must be a finite number"),
    "lambda_text": ("merge_method: task_arithmetic\nbase_model: '{A}'\nparameters: {lambda: x}\nmodels:\n"
                    " - {model: '{B}', parameters: {weight: 0.5}}", "lambda must be a finite number"),
    "normalize_text": ("merge_method: linear\nparameters: {normalize: maybe}\nmodels:\n - {model: '{A}', parameters: "
                       "{weight: 1}}\n - {model: '{B}', parameters: {weight: 1}}", "normalize must be true or false"),
    "negative_padding": (f"merge_method: slerp\ntokenizer: {{source: base, pad_to_multiple_of: -8}}\n{SLERP_AB}"
                         "{model: '{B}', layer_range: [0, 6]}]", "pad_to_multiple_of"),
    "override_unknown_token": (f"merge_method: slerp\ntokenizer: {{source: union, tokens: {{tok5: {{source: {{kind: "
                               f"model_token, model: '{{B}}', token: nosuch}}}}}}}}\n{SLERP_AB}"
                               "{model: '{B}', layer_range: [0, 6]}]", "does not have"),
    "out_dtype_nonsense": ("merge_method: passthrough\nout_dtype: float17\nslices:\n - sources: [{model: '{A}', "
                           "layer_range: [0, 3]}]", "not a float dtype"),
    "unknown_method": ("merge_method: frobnicate\nslices:\n - sources: [{model: '{A}', layer_range: [0, 3]}]",
                       "unknown merge_method"),
    "empty_slices": ("merge_method: passthrough\nslices: []", "merges no model"),
}


@pytest.fixture(scope="module")
def donors(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hazard_donors")
    made = {
        "A": write_donor(root / "A", SHAPE, seed=1),
        "B": write_donor(root / "B", SHAPE, seed=2),
        "C": write_donor(root / "C", SHAPE, seed=3),
        "V98": write_donor(root / "V98", _shape(vocab_size=98), seed=4, added_tokens=2),
        "TL": write_donor(root / "TL", _shape(tie_word_embeddings=True), seed=5),
        "H96": write_donor(root / "H96", _shape(hidden_size=96), seed=6),
        "HEADS": write_donor(root / "HEADS", _shape(num_heads=8, head_dim=8), seed=7),
        "MISS": write_donor(root / "MISS", SHAPE, seed=8),
        "CORRUPT": write_donor(root / "CORRUPT", SHAPE, seed=9, shards=3),
        "SPACE": write_donor(root / "my dönor 1", SHAPE, seed=10),
        "QWEN": write_donor(root / "QWEN", _shape(family="qwen2"), seed=11),
    }
    from safetensors.torch import load_file, save_file

    tensors = load_file(made["MISS"] / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, str(made["MISS"] / "model.safetensors"), metadata={"format": "pt"})
    shard = made["CORRUPT"] / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return made


def _recipe_text(template: str, donors: dict[str, Path]) -> str:
    for key in sorted(donors, key=len, reverse=True):
        template = template.replace("{" + key + "}", str(donors[key]))
    return template


def _cli_merge(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "merger_gui", "merge", str(recipe), str(out), *extra],
                          capture_output=True, text=True)


def _assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(out.name) or p.name.startswith("." + out.name)]


@pytest.mark.parametrize("name", sorted(HAZARDS))
def test_cli_refuses_with_one_line_and_writes_nothing(donors, tmp_path, name):
    template, expected = HAZARDS[name]
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_recipe_text(template, donors))
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    _assert_one_line_error(_cli_merge(recipe, out), expected)
    assert _leftovers(out) == []


@pytest.mark.parametrize("name", ["missing_tensor_linear", "linear_all_zero_weights", "slerp_three_models",
                                  "override_unknown_token", "only_empty_ranges", "negative_padding"])
def test_run_merge_refuses_before_reading(donors, tmp_path, name):
    template, expected = HAZARDS[name]
    text = _recipe_text(template, donors)
    infos = {str(p): inspect_folder(p) for p in donors.values() if str(p) in text}
    out = tmp_path / "merged"
    with pytest.raises(UserError) as caught:
        next(run_merge(load_recipe_text(text), infos, out))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_overwrite(donors, tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_recipe_text("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', "
                                   "layer_range: [0, 3]}]", donors))
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_one_line_error(_cli_merge(recipe, out), "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _assert_one_line_error(_cli_merge(recipe, out, "--overwrite"), "holds keep.txt")
    (out / "keep.txt").unlink()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_text("an earlier merge")
    assert _cli_merge(recipe, out, "--overwrite").returncode == 0
    assert (out / "model.safetensors").stat().st_size > 100


@pytest.mark.parametrize("inside", [False, True])
def test_output_in_a_donor_folder_is_refused(donors, tmp_path, inside):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_recipe_text("merge_method: passthrough\nslices:\n - sources: [{model: '{A}', "
                                   "layer_range: [0, 3]}]", donors))
    before = sorted(p.name for p in donors["A"].iterdir())
    _assert_one_line_error(_cli_merge(recipe, donors["A"] / "sub" if inside else donors["A"]), "donor")
    assert sorted(p.name for p in donors["A"].iterdir()) == before


def test_unicode_names_and_spaces_merge(donors, tmp_path):
    recipe = tmp_path / "récipe with space.yml"
    recipe.write_text(_recipe_text("merge_method: passthrough\nslices:\n - sources: [{model: '{SPACE}', "
                                   "layer_range: [0, 3]}]\n - sources: [{model: '{A}', layer_range: [3, 6]}]",
                                   donors))
    out = tmp_path / "sortie fusionnée"
    result = _cli_merge(recipe, out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6


def test_tied_donor_last_gets_its_embeddings_as_lm_head(donors, tmp_path):
    """mergekit leaves such an output without lm_head under tie_word_embeddings: false (random head)."""
    from safetensors.torch import load_file

    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_recipe_text("merge_method: passthrough\nbase_model: '{A}'\nslices:\n - sources: "
                                   "[{model: '{A}', layer_range: [0, 3]}]\n - sources: [{model: '{TL}', "
                                   "layer_range: [3, 6]}]", donors))
    out = tmp_path / "merged"
    assert _cli_merge(recipe, out).returncode == 0
    merged = load_file(out / "model.safetensors")
    tail = load_file(donors["TL"] / "model.safetensors")
    assert (merged["lm_head.weight"] == tail["model.embed_tokens.weight"]).all()
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def test_models_form_with_only_the_base_is_valid(donors):
    """mergekit returns the base as is; a lone base is not an error."""
    text = _recipe_text("merge_method: task_arithmetic\nbase_model: '{A}'\nmodels:\n - model: '{A}'", donors)
    findings = validate_recipe(load_recipe_text(text), {str(donors["A"]): inspect_folder(donors["A"])})
    assert not [f for f in findings if f.is_error]


@pytest.mark.parametrize("weight", [1.0, 1e6])
def test_a_merge_that_overflows_its_dtype_is_flagged(donors, tmp_path, weight):
    """A weight mergekit accepts but float16 cannot hold: the merge finishes and says the model is broken."""
    from merger_gui.engine.run import MergeWarning

    recipe = load_recipe_text(_recipe_text(
        f"merge_method: linear\ndtype: float16\nparameters: {{normalize: false}}\nmodels:\n"
        f" - {{model: '{{A}}', parameters: {{weight: {weight}}}}}\n - {{model: '{{B}}', parameters: {{weight: 1}}}}",
        donors))
    infos = {name: inspect_folder(name) for name in recipe.stages[0].referenced_models}
    warnings = [e.message for e in run_merge(recipe, infos, tmp_path / "out") if isinstance(e, MergeWarning)]
    flagged = [w for w in warnings if "hold inf or NaN" in w]
    if weight == 1.0:
        assert flagged == []
    else:
        [line] = flagged
        assert " merged tensors hold inf or NaN (" in line and "model.layers.0." in line, line
        assert (tmp_path / "out" / "config.json").exists()  # written, as mergekit writes it, and flagged
