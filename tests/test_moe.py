"""frankenMoE: recipe, validation, estimate, and parity with mergekit-moe 0.1.5 (cheap_embed and hidden)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from merger_gui.cli import main
from merger_gui.core.errors import RecipeError, UserError
from merger_gui.core.estimator import estimate_model, estimate_moe
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.moe_recipe import is_moe_text, load_moe_text, moe_problems
from merger_gui.core.recipe_load import load_recipe_text
from merger_gui.core.synthetic import DonorShape, write_donor

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytest.importorskip("transformers")

from merger_gui.core.moe_recipe import dump_moe  # noqa: E402
from merger_gui.engine.moe import run_moe  # noqa: E402
from merger_gui.engine.run import MergeCancelled, MergeOptions  # noqa: E402
from model_folder import folder_config, folder_weights  # noqa: E402
from parity import assert_same_model  # noqa: E402

MISTRAL = DonorShape(family="mistral")
LLAMA = DonorShape(family="llama", num_layers=3)
CONFIG_KEYS = ("architectures", "model_type", "num_local_experts", "num_experts_per_tok", "hidden_size",
               "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "vocab_size", "max_position_embeddings", "rms_norm_eps", "sliding_window", "tie_word_embeddings",
               "hidden_act", "bos_token_id", "eos_token_id", "dtype", "output_router_logits",
               "router_aux_loss_coef", "router_jitter_noise")

CHEAP = """\
base_model: {m0}
gate_mode: cheap_embed
dtype: bfloat16
experts_per_token: 2
experts:
  - source_model: {m1}
    positive_prompts: ["hello world", "a b c d e"]
    negative_prompts: ["x y"]
  - source_model: {m2}
    positive_prompts: ["code python"]
    residual_scale: 0.5
  - source_model: {m0}
    positive_prompts: ["story", "once upon a time"]
"""
HIDDEN = """\
base_model: {l0}
gate_mode: hidden
experts_per_token: 1
experts:
  - source_model: {l1}
    positive_prompts: ["hello world", "a b"]
  - source_model: {l0}
    positive_prompts: ["code python"]
    negative_prompts: ["hello"]
"""
# mergekit-moe's own build, as its CLI runs it, over several recipes in one interpreter.
MERGEKIT_MOE = """
import json, sys, yaml
from mergekit.moe.config import MoEMergeConfig
from mergekit.options import MergeOptions
from mergekit.scripts.moe import build
for recipe, out in json.loads(sys.argv[1]):
    config = MoEMergeConfig.model_validate(yaml.safe_load(open(recipe)))
    build(config, out, MergeOptions(quiet=True, lazy_unpickle=True, device="cpu"), device="cpu")
"""


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    """Donors and the two recipes (cheap.yml, hidden.yml) in one folder."""
    root = tmp_path_factory.mktemp("moe")
    donors = {f"m{i}": write_donor(root / f"m{i}", MISTRAL, seed=i) for i in range(3)}
    donors |= {f"l{i}": write_donor(root / f"l{i}", LLAMA, seed=10 + i) for i in range(2)}
    for name, template in (("cheap", CHEAP), ("hidden", HIDDEN)):
        (root / f"{name}.yml").write_text(template.format(**donors))
    return root


@pytest.fixture(scope="module")
def workspace(recipes) -> Path:
    """The donors and recipes with mergekit-moe's outputs of them (in mergekit/NAME)."""
    root = recipes
    jobs = [(str(root / f"{name}.yml"), str(root / "mergekit" / name)) for name in ("cheap", "hidden")]
    result = subprocess.run([sys.executable, "-c", MERGEKIT_MOE, json.dumps(jobs)], capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _recipe_and_donors(root: Path, name: str):
    recipe = load_moe_text((root / f"{name}.yml").read_text())
    return recipe, {m: inspect_folder(m) for m in recipe.referenced_models}


def test_cli_merge_builds_the_cheap_embed_moe_exactly_like_mergekit_moe(workspace, tmp_path, capsys):
    out = tmp_path / "ours"
    assert main(["merge", str(workspace / "cheap.yml"), str(out)]) == 0
    assert "merged 39 tensors" in capsys.readouterr().out
    assert_same_model(out, workspace / "mergekit" / "cheap", CONFIG_KEYS)
    gate_up = folder_weights(out)["model.layers.1.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (3, 2 * MISTRAL.intermediate_size, MISTRAL.hidden_size)
    assert (out / "tokenizer.json").is_file() and not list(tmp_path.glob(".ours.partial-*"))


def test_hidden_gates_match_mergekit_moe(workspace, tmp_path):
    recipe, donors = _recipe_and_donors(workspace, "hidden")
    events = list(run_moe(recipe, donors, tmp_path / "ours"))
    assert events[-1].tensors == len(folder_weights(tmp_path / "ours"))
    assert_same_model(tmp_path / "ours", workspace / "mergekit" / "hidden", CONFIG_KEYS)
    assert folder_config(tmp_path / "ours")["dtype"] == "float16"  # the base's, no dtype given


def test_estimate_counts_total_and_active_parameters(workspace):
    recipe, donors = _recipe_and_donors(workspace, "cheap")
    base = donors[recipe.base_model]
    moe = estimate_moe(recipe, base)
    written = sum(t.numel() for t in folder_weights(workspace / "mergekit" / "cheap").values())
    mlp = 3 * MISTRAL.hidden_size * MISTRAL.intermediate_size * MISTRAL.num_layers
    assert moe.total_params == moe.estimate.params == written
    assert moe.active_params == written - (3 - 2) * mlp
    assert moe.estimate.kv.full_bytes == estimate_model(base).kv.full_bytes  # the base's attention, no window
    assert moe.estimate.weights_bytes > estimate_model(base).weights_bytes


def test_recipe_round_trips_and_is_told_from_a_merge_recipe(workspace):
    text = (workspace / "cheap.yml").read_text()
    recipe = load_moe_text(text)
    assert is_moe_text(text) and not is_moe_text("merge_method: linear\nmodels: []\n")
    assert load_moe_text(dump_moe(recipe)) == recipe
    assert recipe.experts[1].residual_scale == 0.5 and recipe.experts[0].negative_prompts == ("x y",)


@pytest.mark.parametrize(("edit", "message"), [
    ("experts_per_token: 2", "experts_per_token: 4"),
    ("gate_mode: cheap_embed", "gate_mode: lucky"),
    ("    residual_scale: 0.5", "    noise_scale: 0.1"),
    ("dtype: bfloat16", "shared_experts: [{source_model: x}]"),
])
def test_recipe_errors_are_one_line(workspace, edit, message):
    text = (workspace / "cheap.yml").read_text().replace(edit, message)
    try:
        recipe = load_moe_text(text)
    except RecipeError as error:
        assert "\n" not in str(error)
        return
    assert moe_problems(recipe) == ["experts_per_token (4) is more than the 3 experts"]


def test_experts_must_share_the_base_shapes_and_prompts_must_differ(workspace, tmp_path):
    recipe, donors = _recipe_and_donors(workspace, "cheap")
    odd = write_donor(tmp_path / "odd", replace(MISTRAL, intermediate_size=96), seed=7)
    donors[recipe.experts[0].source_model] = inspect_folder(odd)
    assert "MLP shapes differ" in moe_problems(recipe, donors)[0]
    same = replace(recipe, experts=tuple(replace(e, positive_prompts=("a",), negative_prompts=())
                                         for e in recipe.experts))
    assert "same prompts" in moe_problems(same)[0]
    with pytest.raises(RecipeError, match="MLP shapes differ"):
        next(run_moe(recipe, donors, tmp_path / "out"))


def test_cancel_and_existing_output_leave_nothing_behind(workspace, tmp_path):
    recipe, donors = _recipe_and_donors(workspace, "cheap")
    cancel = threading.Event()
    events = run_moe(recipe, donors, tmp_path / "out", cancel=cancel)
    next(events)
    cancel.set()
    with pytest.raises(MergeCancelled):
        list(events)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        list(run_moe(recipe, donors, tmp_path / "out"))
    with pytest.raises(UserError, match="notes.txt"):
        list(run_moe(recipe, donors, tmp_path / "out", MergeOptions(overwrite=True)))


def test_a_merge_recipe_reader_says_what_an_moe_recipe_is(recipes):
    with pytest.raises(RecipeError, match="mergekit-moe recipe"):
        load_recipe_text((recipes / "cheap.yml").read_text())


def _cli_json(capsys, *argv: str) -> tuple[int, dict]:
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_validate_reads_an_moe_recipe(recipes, tmp_path, capsys):
    assert main(["validate", str(recipes / "cheap.yml")]) == 0
    assert capsys.readouterr().out.strip() == "no problems found"
    broken = tmp_path / "broken.yml"
    broken.write_text((recipes / "cheap.yml").read_text().replace("experts_per_token: 2", "experts_per_token: 4"))
    status, data = _cli_json(capsys, "validate", str(broken), "--donor", f"{recipes / 'm1'}=profile:nowhere")
    assert status == 1 and not data["valid"]
    assert [f["code"] for f in data["findings"]] == ["moe-recipe", "donor-unavailable"]
    assert "more than the 3 experts" in data["findings"][0]["message"]
    odd = write_donor(tmp_path / "odd", replace(MISTRAL, intermediate_size=96), seed=7)
    assert main(["validate", str(recipes / "cheap.yml"), "--donor", f"{recipes / 'm2'}={odd}"]) == 1
    assert "moe-donor" in capsys.readouterr().out


def test_plan_shows_base_experts_layers_and_parameters(recipes, capsys):
    recipe, donors = _recipe_and_donors(recipes, "cheap")
    counts = estimate_moe(recipe, donors[recipe.base_model])
    assert main(["plan", str(recipes / "cheap.yml")]) == 0
    text = capsys.readouterr().out
    assert f"3 experts, 2 per token, {MISTRAL.num_layers} layers, gate_mode cheap_embed" in text
    assert f"{counts.total_params:,} total, {counts.active_params:,} active per token" in text
    assert f"3  {recipe.base_model}: 2 positive, 0 negative prompts" in text
    status, data = _cli_json(capsys, "plan", str(recipes / "cheap.yml"))
    assert status == 0 and data["num_layers"] == MISTRAL.num_layers
    assert (data["total_params"], data["active_params"]) == (counts.total_params, counts.active_params)
    assert [e["source_model"] for e in data["experts"]] == [e.source_model for e in recipe.experts]


def test_estimate_shows_total_active_vram_and_kv_cache(recipes, capsys):
    recipe, donors = _recipe_and_donors(recipes, "hidden")
    moe = estimate_moe(recipe, donors[recipe.base_model])
    assert main(["estimate", str(recipes / "hidden.yml")]) == 0
    text = capsys.readouterr().out
    assert f"{moe.total_params:,} parameters in total, {moe.active_params:,} active per token" in text
    assert "KV cache" in text and "total GPU memory" in text
    status, data = _cli_json(capsys, "estimate", str(recipes / "hidden.yml"), "--context", "8192")
    assert status == 0 and data["active_params"] == moe.active_params < data["total_params"] == moe.total_params
    assert data["kv_cache_bytes"] == 2 * moe.estimate.kv_cache_bytes  # twice the default 4096 context
