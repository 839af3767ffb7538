"""Built-in shape profiles: plan and estimate merges of well-known bases without any download.

Profiles live in ``base-profiles.json`` (package ``merger_gui.resources``): config facts per
base model plus per-family tensor-name templates, from which every tensor is synthesised
with its exact shape.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any

from .donor import DonorInfo, TensorInfo
from .dtypes import dtype_code
from .errors import DonorError
from .inspect import donor_from_config

PROFILE_PREFIX = "profile:"
# Profile fields copied verbatim into the synthesised config.json.
CONFIG_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "max_position_embeddings",
    "sliding_window", "rope_theta", "rope_scaling", "rms_norm_eps", "torch_dtype", "attention_bias",
    "num_local_experts", "num_experts_per_tok",
)
# Extras that are real config.json keys (others in "extras" are notes).
CONFIG_EXTRAS = (
    "use_sliding_window", "max_window_layers", "query_pre_attn_scalar", "attn_logit_softcapping",
    "final_logit_softcapping", "hidden_activation", "bos_token_id", "eos_token_id", "pad_token_id",
    "original_max_position_embeddings", "pretraining_tp", "mlp_bias",
)


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = files("merger_gui.resources").joinpath("base-profiles.json").read_text(encoding="utf-8")
    return json.loads(text)


def profile_names() -> list[str]:
    """Names of the built-in profiles, in file order (``llama-2-7b``, ``mistral-7b``, …)."""
    return list(_data()["profiles"])


def profile_entry(name: str) -> dict[str, Any]:
    """The raw profile record (config facts, sources, published counts)."""
    try:
        return _data()["profiles"][name]
    except KeyError:
        raise DonorError(f"unknown profile {name!r}; built-in profiles: {', '.join(profile_names())}") from None


def profile_config(name: str) -> dict[str, Any]:
    """A transformers-style config.json for profile ``name``."""
    entry = profile_entry(name)
    config: dict[str, Any] = {"architectures": [entry["architecture"]]}
    config.update({k: entry[k] for k in CONFIG_KEYS if entry.get(k) is not None})
    extras = entry.get("extras") or {}
    config.update({k: extras[k] for k in CONFIG_EXTRAS if k in extras})
    return config


# (words in a model name, size in billions, profile), checked in order. A name that states a
# size must state this one; words of three letters or fewer must start a word ("L3-70B").
_GUESSES: tuple[tuple[tuple[str, ...], float | None, str], ...] = (
    (("mixtral",), 7, "mixtral-8x7b"),
    (("qwen",), 7, "qwen2.5-7b"),
    (("qwen",), 14, "qwen2.5-14b"),
    (("gemma-2", "gemma2"), 9, "gemma-2-9b"),
    (("gemma-2", "gemma2"), 2, "gemma-2-2b"),
    (("gemma",), 7, "gemma-7b"),
    (("phi-3", "phi3"), None, "phi-3-mini-4k"),
    (("llama-3", "llama3", "l3"), 8, "llama-3-8b"),
    (("llama-3", "llama3", "l3"), 70, "llama-3-70b"),
    (("llama-2", "llama2", "l2"), 7, "llama-2-7b"),
    (("llama-2", "llama2", "l2"), 13, "llama-2-13b"),
    (("llama-2", "llama2", "l2"), 70, "llama-2-70b"),
    (("solar",), 10.7, "solar-10.7b"),
    (("mistral", "m7", "zephyr", "starling", "hermes", "openchat", "neural", "cybertron"), 7, "mistral-7b"),
    ((), 10.7, "solar-10.7b"),
    ((), 11, "solar-10.7b"),  # 11B merges are mostly SOLAR-shaped Mistral frankenmerges
    ((), 13, "llama-2-13b"),  # 13B merges are Llama-2 fine-tunes
    ((), 70, "llama-2-70b"),
)
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)b(?![a-z])")


def guess_profile(model_name: str) -> str | None:
    """A built-in profile likely to share ``model_name``'s shape, from family words and the size
    in the name (``Thorns-13B`` → ``llama-2-13b``, ``Starling-LM-7B`` → ``mistral-7b``); None
    when nothing fits."""
    name = model_name.lower().replace("_", "-")
    sizes = {float(size) for size in _SIZE.findall(name)}
    for words, size, profile in _GUESSES:
        if words and not any(_has_word(name, word) for word in words):
            continue
        if size in sizes or (words and not sizes):
            return profile
    return None


def _has_word(name: str, word: str) -> bool:
    return re.search(("(?<![a-z0-9])" if len(word) <= 3 else "") + re.escape(word), name) is not None


@cache
def load_profile(name: str) -> DonorInfo:
    """The :class:`DonorInfo` of a built-in profile (``kind="profile"``, ref ``profile:NAME``).

    Raises:
        DonorError: no profile has that name.
    """
    entry = profile_entry(name)
    config = profile_config(name)
    tensors = _synthesise_tensors(entry, config)
    return donor_from_config(PROFILE_PREFIX + name, "profile", config, tensors)


def _synthesise_tensors(entry: dict[str, Any], config: dict[str, Any]) -> tuple[TensorInfo, ...]:
    family = entry["family"]
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    q, kvd = heads * d, kv * d
    shapes = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "pre_feedforward_layernorm.weight": (h,), "post_feedforward_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kvd, h), "self_attn.k_proj.bias": (kvd,),
        "self_attn.v_proj.weight": (kvd, h), "self_attn.v_proj.bias": (kvd,),
        "self_attn.o_proj.weight": (h, q), "self_attn.qkv_proj.weight": (q + 2 * kvd, h),
        "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter), "mlp.gate_up_proj.weight": (2 * inter, h),
        "block_sparse_moe.gate.weight": (config.get("num_local_experts", 0), h),
        "w1.weight": (inter, h), "w3.weight": (inter, h), "w2.weight": (h, inter),
        "model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h),
    }
    code = dtype_code(config.get("torch_dtype", "bfloat16"))
    data = _data()
    names: list[str] = []
    for layer in range(config["num_hidden_layers"]):
        for template in data["layer_tensors"][family]:
            experts = range(config.get("num_local_experts", 0)) if "{e}" in template else (None,)
            names.extend(template.format(i=layer, e=e) for e in experts)
    non_layer = data["non_layer_tensors"][family]
    if config.get("tie_word_embeddings"):
        non_layer = [n for n in non_layer if n != "lm_head.weight"]
    names[:0] = non_layer[:1]  # embeddings first, as checkpoints order them
    names.extend(non_layer[1:])
    return tuple(TensorInfo(n, shapes[_shape_key(n, shapes)], code) for n in names)


def _shape_key(name: str, shapes: dict[str, tuple[int, ...]]) -> str:
    if name in shapes:
        return name
    # Layer tensors are keyed by their suffix ("self_attn.q_proj.weight", "w1.weight").
    return next(k for k in sorted(shapes, key=len, reverse=True) if name.endswith("." + k))
