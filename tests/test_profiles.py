"""Built-in shape profiles: exact tensor shapes and published parameter counts."""

from __future__ import annotations

import pytest

from merger_gui.core.errors import DonorError
from merger_gui.core.profiles import guess_profile, load_profile, profile_config, profile_entry, profile_names
from merger_gui.core.resolve import resolve_donor

PUBLISHED = {
    "mistral-7b": 7_241_732_096,
    "llama-3-8b": 8_030_261_248,
    "llama-2-70b": 68_976_648_192,
    "llama-2-13b": 13_015_864_320,
    "qwen2.5-7b": 7_615_616_512,
}


@pytest.mark.parametrize("name,count", PUBLISHED.items())
def test_published_parameter_counts(name, count):
    assert profile_entry(name)["params_published"] == count
    assert load_profile(name).param_count == count


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_matches_its_computed_count(name):
    info = load_profile(name)
    entry = profile_entry(name)
    assert info.kind == "profile" and info.ref == f"profile:{name}" and info.display_name == name
    assert info.param_count == entry["params"]
    if entry.get("params_published"):
        assert info.param_count == entry["params_published"]
    assert info.num_layers == entry["num_hidden_layers"] and info.family == entry["family"]
    assert info.head_dim == entry["head_dim_effective"]
    assert sum(t.numel for t in info.layer_tensors(0)) == entry["params_per_layer"]
    assert info.warnings == ()


def test_names_and_unknown_profile():
    assert {"mistral-7b", "llama-2-13b", "gemma-2-9b", "phi-3-mini-4k", "mixtral-8x7b"} <= set(profile_names())
    with pytest.raises(DonorError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_llama_shapes_and_gqa():
    info = load_profile("llama-3-8b")
    assert info.tensor("model.layers.0.self_attn.k_proj.weight").shape == (1024, 4096)
    assert info.tensor("model.layers.31.mlp.down_proj.weight").shape == (4096, 14336)
    assert info.tensor("lm_head.weight").shape == (128256, 4096)
    assert info.dtype == "bfloat16" and {t.dtype for t in info.tensors} == {"BF16"}
    assert info.tensors[0].name == "model.embed_tokens.weight"


def test_qwen2_biases():
    info = load_profile("qwen2.5-7b")
    assert info.tensor("model.layers.0.self_attn.q_proj.bias").shape == (3584,)
    assert info.tensor("model.layers.0.self_attn.k_proj.bias").shape == (512,)
    assert info.tensor("model.layers.0.self_attn.o_proj.bias") is None
    assert info.sliding_window is None and info.sliding_window_layers is None


def test_gemma_tied_and_wide_attention():
    info = load_profile("gemma-7b")
    assert info.tie_word_embeddings and not info.has_lm_head
    assert info.tensor("model.layers.0.self_attn.q_proj.weight").shape == (4096, 3072)
    assert info.tensor("model.layers.0.self_attn.o_proj.weight").shape == (3072, 4096)


def test_gemma2_alternating_sliding_window():
    info = load_profile("gemma-2-9b")
    assert info.sliding_window == 4096
    assert info.sliding_window_layers[:4] == (True, False, True, False) and len(info.sliding_window_layers) == 42
    assert info.tensor("model.layers.3.pre_feedforward_layernorm.weight").shape == (3584,)
    assert info.dtype == "float32"


def test_phi3_fused_projections():
    info = load_profile("phi-3-mini-4k")
    assert info.tensor("model.layers.0.self_attn.qkv_proj.weight").shape == (9216, 3072)
    assert info.tensor("model.layers.0.mlp.gate_up_proj.weight").shape == (16384, 3072)
    assert info.tensor("model.layers.0.self_attn.q_proj.weight") is None


def test_mixtral_experts():
    info = load_profile("mixtral-8x7b")
    assert info.tensor("model.layers.0.block_sparse_moe.gate.weight").shape == (8, 4096)
    assert info.tensor("model.layers.5.block_sparse_moe.experts.7.w2.weight").shape == (4096, 14336)
    assert len(info.layer_tensors(0)) == 6 + 1 + 8 * 3


def test_mistral_sliding_window_and_config():
    info = load_profile("mistral-7b")
    assert info.sliding_window == 4096 and info.sliding_window_layers == (True,) * 32
    config = profile_config("mistral-7b")
    assert config["architectures"] == ["MistralForCausalLM"] and config["num_key_value_heads"] == 8
    assert "head_dim" not in config  # null in the profile: not written
    assert info.config == config


def test_profile_config_loads_in_transformers():
    transformers = pytest.importorskip("transformers")
    for name in ("mistral-7b", "qwen2.5-7b", "gemma-2-9b", "phi-3-mini-4k"):
        config = transformers.AutoConfig.for_model(**profile_config(name))
        assert config.num_hidden_layers == load_profile(name).num_layers


def test_resolve_profile_reference():
    assert resolve_donor("profile:llama-2-13b") is load_profile("llama-2-13b")


@pytest.mark.parametrize("model_name, profile", [
    ("Thorns-13B", "llama-2-13b"),
    ("Gryphe/MythoMax-L2-13b", "llama-2-13b"),
    ("NousResearch/Nous-Hermes-llama-2-7b", "llama-2-7b"),
    ("berkeley-nest/Starling-LM-7B-alpha", "mistral-7b"),
    ("chargoddard/loyal-piano-m7-cdpo", "mistral-7b"),
    ("Starling-NeuralHermes-11B", "solar-10.7b"),
    ("Sao10K/L3-70B-Euryale", "llama-3-70b"),
    ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
    ("Qwen/Qwen2.5-14B", "qwen2.5-14b"),
    ("google/gemma-2-2b", "gemma-2-2b"),
    ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini-4k"),
    ("mistralai/Mixtral-8x22B", None),  # a size no profile has
    ("Qwen/Qwen2.5-32B", None),
    ("random-7b", None),  # Llama-2 or Mistral: no guess
    ("model3-8b", None),  # "l3" must start a word
    ("nowhere-model", None),
])
def test_guess_profile(model_name, profile):
    assert guess_profile(model_name) == profile
    assert profile is None or profile in profile_names()


# Rounded counts as published (Hugging Face model pages); exact ones where known are in the entries.
PUBLISHED_BILLIONS = {
    "yi-34b": 34.4, "mistral-nemo-12b": 12.2, "mistral-small-22b": 22.2, "mistral-small-24b": 23.6,
    "qwen2.5-32b": 32.8, "qwen2.5-72b": 72.7, "llama-3.2-1b": 1.24, "llama-3.2-3b": 3.21,
    "llama-3.3-70b": 70.6, "deepseek-coder-33b": 33.3,
}


@pytest.mark.parametrize("name,billions", PUBLISHED_BILLIONS.items())
def test_bases_people_merge_today_match_their_published_size(name, billions):
    entry = profile_entry(name)
    assert entry["params_published_billions"] == billions and entry["source"].endswith("/config.json")
    assert abs(load_profile(name).param_count / 1e9 - billions) <= 0.05


def test_new_profiles_shapes():
    nemo = load_profile("mistral-nemo-12b")  # head_dim 128 although hidden / heads is 160
    assert nemo.tensor("model.layers.0.self_attn.q_proj.weight").shape == (4096, 5120)
    small = load_profile("llama-3.2-1b")  # tied: no lm_head tensor
    assert small.tie_word_embeddings and small.tensor("lm_head.weight") is None
    assert load_profile("qwen2.5-72b").tensor("model.layers.0.self_attn.k_proj.bias").shape == (1024,)
