"""frankenMoE: recipe, validation, estimate, and parity with mergekit-moe 0.1.5 (cheap_embed and hidden;
Mixtral output, and Qwen MoE output with its shared expert from Qwen2 and Llama donors)."""

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
from merger_gui.core.moe_output import moe_parameters
from merger_gui.core.moe_recipe import MoeExpert, is_moe_text, load_moe_text, moe_problems, output_architecture
from merger_gui.core.recipe_load import load_recipe_text
from merger_gui.core.synthetic import DonorShape, write_donor

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")
pytest.importorskip("transformers")

from merger_gui.core.moe_recipe import dump_moe  # noqa: E402
from merger_gui.engine.events import GateProgress  # noqa: E402
from merger_gui.engine.moe import run_moe  # noqa: E402
from merger_gui.engine.run import MergeCancelled, MergeOptions  # noqa: E402
from model_folder import folder_config, folder_weights  # noqa: E402
from parity import assert_same_model  # noqa: E402

MISTRAL = DonorShape(family="mistral")
LLAMA = DonorShape(family="llama", num_layers=3)
QWEN2 = DonorShape(family="qwen2", num_layers=2)
TIED_LLAMA = DonorShape(family="llama", num_layers=2, tie_word_embeddings=True)
QWEN_CONFIG_KEYS = ("architectures", "model_type", "num_experts", "num_experts_per_tok", "decoder_sparse_step",
                    "norm_topk_prob", "sliding_window", "use_sliding_window", "shared_expert_intermediate_size",
                    "moe_intermediate_size", "intermediate_size", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings",
                    "rms_norm_eps", "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "dtype",
                    "qkv_bias", "mlp_only_layers", "max_window_layers", "output_router_logits",
                    "router_aux_loss_coef", "attention_dropout")
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
# Qwen MoE output, chosen by mergekit-moe because of the gated shared expert (no architecture key).
QWEN_CHEAP = """\
base_model: {q0}
gate_mode: cheap_embed
dtype: bfloat16
experts_per_token: 1
experts:
  - source_model: {q1}
    positive_prompts: ["tok3 tok4"]
  - source_model: {q2}
    positive_prompts: ["tok8", "tok9 tok10 tok11"]
    negative_prompts: ["tok3"]
shared_experts:
  - source_model: {q2}
    positive_prompts: ["tok5 tok6", "tok9"]
    negative_prompts: ["tok7"]
    residual_scale: 0.25
"""
# Qwen MoE from Llama donors (zero attention biases, tied embeddings), hidden-state gates.
QWEN_HIDDEN = """\
base_model: {t0}
gate_mode: hidden
architecture: qwen
experts:
  - source_model: {t1}
    positive_prompts: ["tok3 tok4"]
  - source_model: {t0}
    positive_prompts: ["tok8"]
shared_experts:
  - source_model: {t0}
    positive_prompts: ["tok5 tok6"]
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

RECIPES = {"cheap": CHEAP, "hidden": HIDDEN, "qwen_cheap": QWEN_CHEAP, "qwen_hidden": QWEN_HIDDEN,
           "hidden_avg": HIDDEN.replace("gate_mode: hidden", "gate_mode: hidden_avg")}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    """Donors and the recipes (NAME.yml for each of RECIPES) in one folder."""
    root = tmp_path_factory.mktemp("moe")
    donors = {f"m{i}": write_donor(root / f"m{i}", MISTRAL, seed=i) for i in range(3)}
    donors |= {f"l{i}": write_donor(root / f"l{i}", LLAMA, seed=10 + i) for i in range(2)}
    donors |= {f"q{i}": write_donor(root / f"q{i}", QWEN2, seed=20 + i, dtype="float32") for i in range(3)}
    donors |= {f"t{i}": write_donor(root / f"t{i}", TIED_LLAMA, seed=30 + i) for i in range(2)}
    for name, template in RECIPES.items():
        (root / f"{name}.yml").write_text(template.format(**donors))
    return root


@pytest.fixture(scope="module")
def workspace(recipes) -> Path:
    """The donors and recipes with mergekit-moe's outputs of them (in mergekit/NAME)."""
    root = recipes
    jobs = [(str(root / f"{name}.yml"), str(root / "mergekit" / name)) for name in RECIPES]
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
    printed = capsys.readouterr()
    assert "merged 39 tensors" in printed.out and "moe: routers computed from 4 prompt batches" in printed.err
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
    recipe, donors = _recipe_and_donors(workspace, "hidden_avg")  # mean over the prompt's tokens
    list(run_moe(recipe, donors, tmp_path / "avg"))
    assert_same_model(tmp_path / "avg", workspace / "mergekit" / "hidden_avg", CONFIG_KEYS)
    gate = "model.layers.1.mlp.gate.weight"
    assert not torch.equal(folder_weights(tmp_path / "avg")[gate], folder_weights(tmp_path / "ours")[gate])


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


@pytest.mark.parametrize(("edit", "replacement", "message"), [
    ("experts_per_token: 2", "experts_per_token: 4", "experts_per_token (4) is more than the 3 experts"),
    ("gate_mode: cheap_embed", "gate_mode: lucky", "unknown gate_mode 'lucky'"),
    ("    residual_scale: 0.5", "    noise_scale: x", "expert 2: noise_scale must be a number"),
    ("dtype: bfloat16", "shared_experts: [{source_model: x, positive_prompts: [a], color: 1}]",
     "shared expert 1: unknown key 'color'"),
    ("dtype: bfloat16", "architecture: mixtral\nshared_experts: [{source_model: x, positive_prompts: [a]}]",
     "no MoE output fits: Mixtral has no shared experts"),
    ("dtype: bfloat16", "shared_experts: [{source_model: x}]",
     "mergekit-moe would build DeepSeek MoE output here, which this tool does not build"),
    ("dtype: bfloat16", "architecture: qwen3", "mergekit-moe would build Qwen3 MoE output here"),
    ("dtype: bfloat16", "architecture: phi", "architecture 'phi' names none of mergekit-moe's outputs"),
    ("gate_mode: cheap_embed", "gate_mode: uniform_random\nshared_experts: [{source_model: x}, {source_model: y}]",
     "no MoE output fits: Mixtral has no shared experts; DeepSeek MoE takes at most one shared expert; "
     "Qwen MoE takes exactly one shared expert, not 2; Qwen3 MoE has no shared experts"),
])
def test_recipe_errors_are_one_line(workspace, edit, replacement, message):
    text = (workspace / "cheap.yml").read_text().replace(edit, replacement)
    try:
        problems = moe_problems(load_moe_text(text))
    except RecipeError as error:
        problems = [str(error)]
    assert any(problem.startswith(message) for problem in problems), problems
    assert all("\n" not in problem for problem in problems)


@pytest.mark.parametrize(("edit", "model_type", "expected"), [
    ({}, "llama", "Mixtral"),  # DeepSeek MoE fits too: mergekit-moe prefers Mixtral
    ({}, "qwen2", "no MoE output fits: Mixtral takes llama or mistral donors, not qwen2"),
    ({"shared": ("prompt",)}, "qwen2", "Qwen MoE"),
    ({"shared": ("prompt",)}, "mistral", "Qwen MoE"),
    ({"shared": ("prompt",), "architecture": "Qwen"}, "llama", "Qwen MoE"),  # Qwen3 MoE also matches the name
    ({"shared": ()}, "llama", "mergekit-moe would build DeepSeek MoE"),  # an ungated shared expert
    ({"shared": (), "gate_mode": "random", "architecture": "qwen"}, "llama", "Qwen MoE"),
    ({"shared": (), "gate_mode": "random"}, "llama", "mergekit-moe would build DeepSeek MoE"),  # first that fits
    ({"architecture": "qwen"}, "qwen3", "mergekit-moe would build Qwen3 MoE"),
])
def test_output_architecture_is_chosen_as_mergekit_moe_chooses(workspace, edit, model_type, expected):
    recipe = load_moe_text((workspace / "cheap.yml").read_text())
    shared = () if "shared" not in edit else (MoeExpert("x", positive_prompts=edit["shared"]),)
    recipe = replace(recipe, shared_experts=shared, architecture=edit.get("architecture"),
                     gate_mode=edit.get("gate_mode", recipe.gate_mode))
    try:
        chosen = output_architecture(recipe, model_type)
    except RecipeError as error:
        chosen = str(error)
    assert chosen.startswith(expected)


def test_qwen_moe_from_qwen2_donors_matches_mergekit_moe(workspace, tmp_path):
    recipe, donors = _recipe_and_donors(workspace, "qwen_cheap")
    assert main(["merge", str(workspace / "qwen_cheap.yml"), str(tmp_path / "ours")]) == 0
    assert_same_model(tmp_path / "ours", workspace / "mergekit" / "qwen_cheap", QWEN_CONFIG_KEYS)
    weights = folder_weights(tmp_path / "ours")
    assert weights["model.layers.1.mlp.shared_expert_gate.weight"].shape == (1, QWEN2.hidden_size)
    assert weights["model.layers.0.mlp.experts.1.up_proj.weight"].dtype == torch.bfloat16


def test_qwen_moe_from_llama_donors_matches_mergekit_moe_and_loads(workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe, donors = _recipe_and_donors(workspace, "qwen_hidden")
    list(run_moe(recipe, donors, tmp_path / "ours"))
    theirs = workspace / "mergekit" / "qwen_hidden"
    assert_same_model(tmp_path / "ours", theirs, QWEN_CONFIG_KEYS)
    bias = folder_weights(tmp_path / "ours")["model.layers.0.self_attn.k_proj.bias"]
    assert bias.shape == (TIED_LLAMA.num_kv_heads * 16,) and not bias.any()  # Qwen2 wants biases: zeros
    tokens = torch.tensor([[1, 5, 6, 7, 8]])
    logits = [AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(tokens).logits
              for folder in (tmp_path / "ours", theirs)]
    assert torch.equal(*logits)  # our config.json builds the same model


def test_noise_scale_adds_seeded_noise_to_the_expert_before_its_residual_scale(workspace, tmp_path):
    text = (workspace / "cheap.yml").read_text().replace("    residual_scale: 0.5",
                                                          "    residual_scale: 0.5\n    noise_scale: 0.02")
    recipe = load_moe_text(text)
    donors = {m: inspect_folder(m) for m in recipe.referenced_models}
    for run in ("a", "b"):
        list(run_moe(recipe, donors, tmp_path / run, MergeOptions(seed=3)))
    ours, theirs = folder_weights(tmp_path / "a"), folder_weights(workspace / "mergekit" / "cheap")
    assert all(torch.equal(t, folder_weights(tmp_path / "b")[n]) for n, t in ours.items())  # seeded
    for name, scale in (("gate_up_proj", 1.0), ("down_proj", 0.5)):
        tensor = f"model.layers.2.mlp.experts.{name}"
        noise = ours[tensor][1].float() - theirs[tensor][1].float()  # expert 2; mergekit-moe's without noise
        assert abs(noise.std().item() / (0.02 * scale) - 1) < 0.1 and abs(noise.mean().item()) < 0.002
        assert torch.equal(ours[tensor][[0, 2]], theirs[tensor][[0, 2]])
    assert all(torch.equal(t, theirs[n]) for n, t in ours.items() if ".experts." not in n)


def test_qwen_estimate_counts_the_shared_expert_as_always_active(workspace, capsys):
    recipe, donors = _recipe_and_donors(workspace, "qwen_hidden")
    base = donors[recipe.base_model]
    moe = estimate_moe(recipe, base)
    written = sum(t.numel() for t in folder_weights(workspace / "mergekit" / "qwen_hidden").values())
    mlp = 3 * TIED_LLAMA.hidden_size * TIED_LLAMA.intermediate_size * TIED_LLAMA.num_layers
    assert moe.total_params == moe.estimate.params == written
    assert moe.active_params == written == moe_parameters(recipe, base).active  # 2 of 2 experts, and the shared
    one = estimate_moe(replace(recipe, experts_per_token=1), base)
    assert one.active_params == written - mlp
    assert moe.estimate.kv.full_bytes == estimate_model(base).kv.full_bytes
    assert main(["plan", str(workspace / "qwen_hidden.yml")]) == 0
    text = capsys.readouterr().out
    assert "MoE (mergekit-moe, Qwen MoE output): 2 experts, 2 per token" in text
    assert f"shared  {recipe.shared_experts[0].source_model}: 1 positive, 0 negative prompts" in text


def test_shared_experts_round_trip_and_mixed_donors_are_refused(workspace):
    recipe, donors = _recipe_and_donors(workspace, "qwen_cheap")
    noisy = replace(recipe, shared_experts=(replace(recipe.shared_experts[0], noise_scale=0.01),))
    assert load_moe_text(dump_moe(noisy)) == noisy
    assert recipe.shared_experts[0].residual_scale == 0.25 and recipe.referenced_models[-1].endswith("q2")
    mixed = dict(donors, **{recipe.shared_experts[0].source_model: inspect_folder(workspace / "t0")})
    assert moe_problems(recipe, mixed)[0].endswith("is llama, the base is qwen2")
    alone = replace(recipe, shared_experts=())
    assert moe_problems(alone, donors) == ["no MoE output fits: Mixtral takes llama or mistral donors, not qwen2; "
                                           "DeepSeek MoE takes llama or mistral donors, not qwen2; Qwen MoE takes "
                                           "exactly one shared expert, not 0; Qwen3 MoE takes qwen3 donors, not qwen2"]


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


def test_hidden_gates_report_each_prompt_batch_and_stop_between_them(recipes, tmp_path):
    recipe, donors = _recipe_and_donors(recipes, "hidden")  # expert 1: positive; expert 2: positive, negative
    events = list(run_moe(recipe, donors, tmp_path / "out"))
    gates = [(e.done, e.total, e.expert, e.model) for e in events if isinstance(e, GateProgress)]
    l0, l1 = recipe.base_model, recipe.experts[0].source_model
    assert gates == [(0, 3, "expert 1", l1), (1, 3, "expert 1", l1), (2, 3, "expert 2", l0), (3, 3, "expert 2", l0)]
    kinds = [type(e).__name__ for e in events]
    assert kinds[:6] == ["StageStarted", *["GateProgress"] * 4, "TensorProgress"]

    cancel, seen = threading.Event(), []
    with pytest.raises(MergeCancelled):
        for event in run_moe(recipe, donors, tmp_path / "cancelled", cancel=cancel):
            if isinstance(event, GateProgress):
                seen.append(event.done)
                if event.done == 2:
                    cancel.set()  # before the last forward pass
    assert seen == [0, 1, 2] and list(tmp_path.iterdir()) == [tmp_path / "out"]


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
