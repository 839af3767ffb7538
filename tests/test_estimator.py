"""The estimator against published counts, llama.cpp's GGUF sizes and transformers' real KV cache."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from merger_gui.cli import main
from merger_gui.core.errors import UserError
from merger_gui.core.estimator import (
    COPY_ENGINE_BYTES, METHOD_SCRATCH, TORCH_ENGINE_BYTES, EstimateOptions, estimate_model, estimate_plan,
    kv_cache, solve_max_context,
)
from merger_gui.core.methods import METHODS
from merger_gui.core.plan import plan_recipe
from merger_gui.core.profiles import load_profile, profile_entry
from merger_gui.core.quantization import GGUFContext, gguf_tensor_type, parse_weight_format, weight_bytes
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.synthetic import DonorShape, donor_config
from merger_gui.core.units import format_size

KIB = 1024
GIB = 2**30

ROSE_DONORS = {"Thorns-13B": "profile:llama-2-13b", "Noromaid-13B": "profile:llama-2-13b"}
NYXENE_DONORS = {
    "fblgit/una-cybertron-7b-v2": "profile:mistral-7b",
    "chargoddard/loyal-piano-m7-cdpo": "profile:mistral-7b",
    "berkeley-nest/Starling-LM-7B-alpha": "profile:mistral-7b",
    "openaccess-ai-collective/DPOpenHermes-7B": "profile:mistral-7b",
    # The published recipe's misnamed stage-2 reference: a 48-layer Mistral-shaped model.
    "Starling-NeuralHermes-11B": "profile:solar-10.7b",
}


def seed_estimate(path: Path, refs: dict[str, str], options: EstimateOptions = EstimateOptions()):
    from merger_gui.core.recipe_yaml import load_recipe

    recipe = load_recipe(path)
    donors = {name: resolve_donor(ref) for name, ref in refs.items()}
    return estimate_plan(plan_recipe(recipe, donors), donors, options)


@pytest.mark.parametrize("profile, published", [
    ("mistral-7b", 7_241_732_096), ("llama-3-8b", 8_030_261_248),
    ("llama-2-70b", 68_976_648_192), ("llama-2-13b", 13_015_864_320),
])
def test_parameter_counts_match_published(profile, published):
    estimate = estimate_model(load_profile(profile))
    assert estimate.params == published == profile_entry(profile)["params_published"]


def test_rose_20b_layers_params_and_kv(seed_recipe_path):
    result = seed_estimate(seed_recipe_path("rose-20b.yaml"), ROSE_DONORS)
    rose = result.final
    assert (rose.num_layers, rose.params) == (62, 19_994_362_880)
    assert rose.kv.bytes_per_token == 1240 * KIB
    assert rose.kv_cache_bytes == 1240 * KIB * 4096
    assert format_size(rose.kv_cache_bytes, 2) == "4.84 GiB"
    assert rose.stored_bytes == 2 * 19_994_362_880  # float16 output
    thorns = result.donors[0]
    assert thorns.name == "Thorns-13B" and thorns.estimate.params == 13_015_864_320
    # 22 more layers: 22 × 317,204,480 params at 2 B and 22 × 20 KiB × 4096 of KV; compute unchanged.
    assert thorns.delta_bytes == 22 * 317_204_480 * 2 + 22 * 20 * KIB * 4096
    assert thorns.describe() == f"+{thorns.delta_bytes / GIB:.2f} GiB vs Thorns-13B at 4k"
    # A float16 passthrough of float16 donors copies bytes: flat, whatever the tensor sizes.
    assert result.merge.peak_ram_bytes == COPY_ENGINE_BYTES
    assert result.merge.download_bytes == 0 and result.merge.intermediate_disk_bytes == 0


def test_passthrough_that_converts_dtype_needs_torch_ram(seed_recipe_path):
    from merger_gui.core.recipe_yaml import load_recipe

    recipe = load_recipe(seed_recipe_path("rose-20b.yaml"))
    to_bf16 = recipe.replace_stage(0, replace(recipe.stages[0], dtype="bfloat16"))
    donors = {name: load_profile("llama-2-13b") for name in ROSE_DONORS}
    result = estimate_plan(plan_recipe(to_bf16, donors), donors)
    embed = 32000 * 5120  # the largest tensor: read as fp16, written as bf16
    assert result.merge.peak_ram_bytes == embed * (2 + 2 + 1) + TORCH_ENGINE_BYTES


def test_nyxene_stages(seed_recipe_path):
    result = seed_estimate(seed_recipe_path("nyxene-11b.yaml"), NYXENE_DONORS)
    assert len(result.stages) == 3
    for stage in result.stages:
        assert (stage.num_layers, stage.params) == (48, 10_731_524_096)
        assert stage.kv.bytes_per_token == 192 * KIB
    assert result.merge.intermediate_disk_bytes == 2 * result.final.stored_bytes
    # The slerp stage holds two bf16 inputs, the bf16 output and a byte of scratch per element.
    embed = 32000 * 4096
    assert result.merge.peak_ram_bytes == embed * (2 * 2 + 2 + 1) + TORCH_ENGINE_BYTES
    assert {c.name for c in result.donors} == set(NYXENE_DONORS)


def test_every_method_has_a_memory_term():
    assert set(METHOD_SCRATCH) == set(METHODS)


def ties_peak_ram(profile: str, models: int) -> int:
    from merger_gui.core.recipe_yaml import load_recipe_text

    others = "".join(f"  - {{model: m{i}, parameters: {{weight: 0.5, density: 0.5}}}}\n" for i in range(1, models))
    recipe = load_recipe_text(f"models:\n  - model: m0\n{others}merge_method: ties\nbase_model: m0\n")
    donors = {f"m{i}": load_profile(profile) for i in range(models)}
    return estimate_plan(plan_recipe(recipe, donors), donors).merge.peak_ram_bytes


def test_ties_peak_ram_is_its_sort_for_few_models_and_its_sign_election_for_many():
    embed = 32000 * 5120  # llama-2-13b, float16: w = 2, no conversion on reading
    # 3 inputs (6 B) + sorting one delta (3·2 + 23 B) + a byte of slack per element.
    assert ties_peak_ram("llama-2-13b", 3) == embed * (6 + 29 + 1) + TORCH_ENGINE_BYTES
    # 16 inputs (32 B) + electing signs over 16 deltas (16·(2·2 + 1) + 2 B) + slack.
    assert ties_peak_ram("llama-2-13b", 16) == embed * (32 + 82 + 1) + TORCH_ENGINE_BYTES


def test_peak_ram_counts_the_heap_left_by_tensors_under_32_mib():
    # mistral-7b: a 4096 × 1024 k_proj (8 MiB in bfloat16) merges in heap blocks that stay in
    # the process; three of its footprints exceed a byte per embedding element.
    per_element = 6 + 29
    expected = 32000 * 4096 * per_element + 3 * 1024 * 4096 * per_element + TORCH_ENGINE_BYTES
    assert ties_peak_ram("mistral-7b", 3) == expected


def test_llama_3_8b_gguf_sizes_match_llama_cpp():
    model = load_profile("llama-3-8b")
    assert format_size(weight_bytes(model, parse_weight_format("Q4_K_M")), 2) == "4.58 GiB"
    assert format_size(weight_bytes(model, parse_weight_format("Q5_K_M")), 2) == "5.33 GiB"
    assert format_size(weight_bytes(model, parse_weight_format("Q8_0")), 2) == "7.95 GiB"


def test_mixture_rule_depends_on_depth():
    model = load_profile("llama-2-13b")
    ctx32, ctx62 = GGUFContext.of(replace(model, num_layers=32)), GGUFContext.of(replace(model, num_layers=62))

    def q6_layers(ctx):
        return [i for i in range(ctx.num_layers)
                if gguf_tensor_type(f"model.layers.{i}.self_attn.v_proj.weight", (5120, 5120), "Q4_K_M", ctx) == "Q6_K"]

    assert q6_layers(ctx32) == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert len(q6_layers(ctx62)) == 7 + 8 + len(range(9, 54, 3))  # n/8 = 7, 7n/8 = 54
    assert gguf_tensor_type("lm_head.weight", (32000, 5120), "Q4_K_M", ctx32) == "Q6_K"
    assert gguf_tensor_type("model.embed_tokens.weight", (32000, 5120), "Q4_K_M", ctx32) == "Q4_K"
    assert gguf_tensor_type("model.norm.weight", (5120,), "Q4_K_M", ctx32) == "F32"
    assert gguf_tensor_type("model.layers.0.self_attn.q_proj.bias", (5120,), "Q4_K_M", ctx32) == "F32"
    gemma = GGUFContext.of(load_profile("gemma-7b"))  # tied: the embeddings are the output
    assert gguf_tensor_type("model.embed_tokens.weight", (256000, 3072), "Q4_K_M", gemma) == "Q6_K"
    assert gguf_tensor_type("model.layers.0.self_attn.q_proj.weight", (5120, 5120), "Q4_K_S", ctx32) == "Q4_K"
    assert gguf_tensor_type("model.layers.3.self_attn.v_proj.weight", (5120, 5120), "Q4_K_S", ctx32) == "Q5_K"


def test_quantised_kv_element_sizes():
    model = load_profile("llama-2-13b")  # 40 layers × 40 KV heads × 128 = 5120 elements per K row
    per_token = {t: kv_cache(model, 1, kv_dtype=t).bytes_per_token for t in ("f16", "f32", "fp8", "q8_0", "q4_0")}
    elements = 2 * 40 * 5120
    assert per_token == {"f16": elements * 2, "f32": elements * 4, "fp8": elements,
                         "q8_0": elements * 34 // 32, "q4_0": elements * 18 // 32}


def test_sliding_window_full_and_windowed():
    model = load_profile("gemma-2-9b")  # even layers slide over 4096 positions
    kv = kv_cache(model, 8192)
    per_layer = 2 * 8 * 256 * 2
    assert kv.full_bytes == 42 * per_layer * 8192
    assert kv.windowed_bytes == 21 * per_layer * 8192 + 21 * per_layer * 4096
    assert kv.windowed_layer_count == 21
    assert estimate_model(model, EstimateOptions(context=8192)).kv_cache_bytes == kv.windowed_bytes
    # llama.cpp runs Mistral v0.1 without its window; transformers and vLLM use it.
    mistral = load_profile("mistral-7b")
    by_runtime = {r: estimate_model(mistral, EstimateOptions(context=8192, runtime=r)).kv_cache_bytes
                  for r in ("llama.cpp", "vllm")}
    assert by_runtime == {"llama.cpp": 128 * KIB * 8192, "vllm": 128 * KIB * 4096}


@pytest.mark.parametrize("runtime, weights, kv_dtype", [
    ("llama.cpp", "Q4_K_M", "f16"), ("transformers", "bf16", "q8_0"), ("vllm", "fp8", "fp8"),
])
def test_max_context_is_exact(runtime, weights, kv_dtype):
    model = load_profile("llama-2-13b")
    budget = 40 * GIB
    options = EstimateOptions(runtime=runtime, weights=weights, kv_dtype=kv_dtype, gpu_memory_bytes=budget)
    best = estimate_model(model, options).max_context
    assert best and best > 1

    def total(context):
        return estimate_model(model, replace(options, context=context)).total_bytes

    assert total(best) <= budget < total(best + 1)


def test_max_context_edges():
    assert solve_max_context(lambda c: 100 + c, 50) == 0
    assert solve_max_context(lambda c: 100, 200) is None
    mistral = load_profile("mistral-7b")  # every layer windowed, vLLM's compute term is constant
    assert estimate_model(mistral, EstimateOptions(runtime="vllm", gpu_memory_bytes=40 * GIB)).max_context is None


def test_the_trained_context_comes_from_the_config():
    assert estimate_model(load_profile("llama-2-13b")).trained_context == 4096
    assert estimate_model(load_profile("mistral-7b")).trained_context == 32768
    no_config = replace(load_profile("llama-2-13b"), config={})
    assert estimate_model(no_config).trained_context is None


def test_weight_bytes_equal_tensor_bytes_on_disk(make_donor):
    safetensors = pytest.importorskip("safetensors")
    folder = make_donor("small", DonorShape(num_layers=3), dtype="bfloat16")
    with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = f.keys()  # safe_open has keys() but is no mapping: it cannot be iterated
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in names)
    estimate = estimate_model(resolve_donor(str(folder)))
    assert estimate.weights_bytes == estimate.stored_bytes == on_disk


@pytest.mark.parametrize("shape, config_extra", [
    (DonorShape(num_heads=4, num_kv_heads=2), {}),
    (DonorShape(num_heads=4, num_kv_heads=1, head_dim=24), {}),
    (DonorShape(family="mistral", num_heads=4, num_kv_heads=2), {"sliding_window": 8}),
])
def test_kv_cache_equals_transformers_dynamic_cache(make_donor, shape, config_extra):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = make_donor("kv", shape, dtype="float32")
    config = donor_config(shape, "float32") | config_extra
    (folder / "config.json").write_text(json.dumps(config))
    tokens, batch = 13, 2
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.randint(3, shape.vocab_size, (batch, tokens)), use_cache=True)
    held = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    options = EstimateOptions(context=tokens, batch=batch, kv_dtype="f32", runtime="transformers")
    estimate = estimate_model(resolve_donor(str(folder)), options)
    assert estimate.kv_cache_bytes == held
    if config_extra:
        assert estimate.kv.windowed_bytes < estimate.kv.full_bytes


@pytest.mark.parametrize("options", [
    dict(context=0), dict(context=-5), dict(batch=0), dict(weights="Q7_K"), dict(kv_dtype="q3"),
    dict(runtime="ollama"), dict(weights="exl2:12"),
])
def test_nonsense_options_raise_user_error(options):
    with pytest.raises(UserError):
        EstimateOptions(**options)


def test_cli_json_for_a_profile(capsys):
    assert main(["estimate", "profile:llama-3-8b", "--weights", "Q4_K_M", "--gpu-memory", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 8_030_261_248 and data["num_layers"] == 32
    assert data["weights_bytes"] == weight_bytes(load_profile("llama-3-8b"), parse_weight_format("Q4_K_M"))
    assert data["kv_bytes_per_token"] == 128 * KIB and data["kv_cache_bytes"] == 128 * KIB * 4096
    assert data["total_bytes"] <= 8 * GIB and data["max_context"] > 4096


def test_cli_recipe_json_and_table(seed_recipe_path, capsys):
    donors = [f"--donor={name}={ref}" for name, ref in ROSE_DONORS.items()]
    assert main(["estimate", str(seed_recipe_path("rose-20b.yaml")), *donors, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 19_994_362_880 and data["kv_bytes_per_token"] == 1240 * KIB
    assert [s["num_layers"] for s in data["stages"]] == [62]
    assert [d["name"] for d in data["donors"]] == ["Thorns-13B", "Noromaid-13B"]
    assert main(["estimate", str(seed_recipe_path("rose-20b.yaml")), *donors, "--weights", "Q4_K_M"]) == 0
    table = capsys.readouterr().out
    assert "GiB = 2^30 bytes" in table and "4.84 GiB" in table and "vs Thorns-13B at 4k" in table


@pytest.mark.parametrize("argv, message", [
    (["--context", "-5"], "context must be at least 1 token, not -5"), (["--batch", "0"], "batch"),
    (["--weights", "Q9_K"], "unknown weight format 'Q9_K'"), (["--kv-dtype", "int3"], "KV cache type"),
    (["--gpu-memory", "-2"], "--gpu-memory"), (["--gpu-memory", "abc"], "--gpu-memory: expected a number of GiB"),
    (["--gpu-memory", "inf"], "--gpu-memory"), (["--overhead", "nan"], "--overhead"),
    (["--runtime", "ollama"], "invalid choice: 'ollama'"), (["--donor", "a=b"], "--donor applies to recipes only"),
])
def test_cli_rejects_nonsense_with_one_line(argv, message, capsys):
    try:
        code = main(["estimate", "profile:llama-2-13b", *argv])
    except SystemExit as exit_info:  # argparse's usage errors exit 2
        code = exit_info.code
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_exl2_head_bits():
    model = load_profile("llama-2-13b")
    body = sum(t.numel for t in model.tensors if ".layers." in t.name and len(t.shape) == 2)
    rest = sum(t.numel for t in model.tensors if ".layers." in t.name and len(t.shape) == 1) + 5120 + 32000 * 5120
    head = 32000 * 5120
    assert weight_bytes(model, parse_weight_format("exl2:4")) == body // 2 + head * 6 // 8 + rest * 2
    assert weight_bytes(model, parse_weight_format("exl2:6")) == body * 6 // 8 + head + rest * 2
    assert math.isclose(weight_bytes(model, parse_weight_format("4.65bpw")) / model.param_count * 8, 4.9, abs_tol=0.1)
