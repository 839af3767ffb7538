"""Small random donor models on disk, for tests, benchmarks and the first-run demo.

A donor is a folder with ``config.json``, safetensors weights (single or sharded, or a
PyTorch ``.bin`` checkpoint) and a small word-level ``tokenizer.json`` that
transformers can load. Writing imports torch lazily (bf16 and ``.bin`` need it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FAMILY_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "gemma": ("GemmaForCausalLM", "gemma"),
}


@dataclass(frozen=True)
class DonorShape:
    """Shape of a synthetic donor; defaults give a ~100 kB Llama-like model."""

    family: str = "llama"
    num_layers: int = 4
    hidden_size: int = 64
    intermediate_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    vocab_size: int = 96
    tie_word_embeddings: bool = False

    @property
    def effective_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


def donor_config(shape: DonorShape, dtype: str = "float16") -> dict:
    """A transformers-style config.json for ``shape``."""
    architecture, model_type = FAMILY_ARCHITECTURES[shape.family]
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
    }
    if shape.head_dim is not None:
        config["head_dim"] = shape.head_dim
    if shape.family == "gemma":
        config["head_dim"] = shape.effective_head_dim
        config["hidden_act"] = "gelu_pytorch_tanh"
    return config


def donor_tensor_shapes(shape: DonorShape) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape for ``shape``, in checkpoint order."""
    h, i, d = shape.hidden_size, shape.intermediate_size, shape.effective_head_dim
    q, kv = shape.num_heads * d, shape.num_kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab_size, h)}
    for layer in range(shape.num_layers):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        if shape.family == "qwen2":
            shapes[p + "self_attn.q_proj.bias"] = (q,)
            shapes[p + "self_attn.k_proj.bias"] = (kv,)
            shapes[p + "self_attn.v_proj.bias"] = (kv,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
    shapes["model.norm.weight"] = (h,)
    if not shape.tie_word_embeddings:
        shapes["lm_head.weight"] = (shape.vocab_size, h)
    return shapes


def random_tensors(shape: DonorShape, dtype: str = "float16", seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights (norms near 1, matrices small) as numpy float32 arrays."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, dims in donor_tensor_shapes(shape).items():
        if name.endswith("norm.weight"):
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32)
        else:
            tensors[name] = (0.05 * rng.standard_normal(dims)).astype(np.float32)
    return tensors


def tokenizer_files(vocab_size: int, added_tokens: int = 0) -> dict[str, dict]:
    """A word-level tokenizer.json + tokenizer_config.json with ``vocab_size`` tokens.

    The last ``added_tokens`` of them are marked as added special tokens, like the
    ``<|im_start|>`` tokens finetunes add on top of a 32000-token base.
    """
    base = vocab_size - added_tokens
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, base):
        vocab[f"tok{i}"] = i
    added = [{"id": i, "content": f"<extra_{i}>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i in range(base, vocab_size)]
    specials = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for c, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials + added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 512,
    }
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


def write_donor(
    path: str | Path,
    shape: DonorShape = DonorShape(),
    *,
    dtype: str = "float16",
    seed: int = 0,
    shards: int = 1,
    weight_format: str = "safetensors",
    added_tokens: int = 0,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a random donor folder and return its path.

    Args:
        shape: Architecture of the donor.
        dtype: Storage dtype: ``float16``, ``bfloat16`` or ``float32``.
        seed: Random seed; two donors with different seeds differ everywhere.
        shards: Number of weight files; more than one writes an index.
        weight_format: ``safetensors`` or ``bin`` (the latter needs torch).
        added_tokens: How many of the vocabulary's last tokens are added tokens.
        extra_tensors: Additional tensors to store (e.g. ``rotary_emb.inv_freq`` buffers).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(donor_config(shape, dtype), indent=2))
    for name, content in tokenizer_files(shape.vocab_size, added_tokens).items():
        (folder / name).write_text(json.dumps(content, indent=2))
    tensors = random_tensors(shape, dtype, seed)
    tensors.update(extra_tensors or {})
    _write_weights(folder, tensors, dtype, shards, weight_format)
    return folder


def _write_weights(folder: Path, tensors: dict[str, np.ndarray], dtype: str, shards: int, weight_format: str) -> None:
    names = list(tensors)
    groups = [names[k::shards] for k in range(shards)] if shards > 1 else [names]
    if weight_format == "safetensors":
        stem, ext, index_name = "model", "safetensors", "model.safetensors.index.json"
    elif weight_format == "bin":
        stem, ext, index_name = "pytorch_model", "bin", "pytorch_model.bin.index.json"
    else:
        raise ValueError(f"unknown weight format {weight_format!r}")
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        filename = f"{stem}.{ext}" if shards == 1 else f"{stem}-{k + 1:05d}-of-{shards:05d}.{ext}"
        part = {n: tensors[n] for n in group}
        total += _save(folder / filename, part, dtype, weight_format)
        weight_map.update({n: filename for n in group})
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / index_name).write_text(json.dumps(index, indent=2))


def _save(file: Path, tensors: dict[str, np.ndarray], dtype: str, weight_format: str) -> int:
    import torch  # only the writer needs torch: bf16 and .bin have no numpy path

    torch_dtype = getattr(torch, dtype)
    # float32 arrays are weights and take the donor's dtype; others keep theirs (buffers).
    converted = {
        n: torch.from_numpy(a).to(torch_dtype) if n in _cast_names(tensors) else torch.from_numpy(a)
        for n, a in tensors.items()
    }
    if weight_format == "bin":
        torch.save(converted, file)
    else:
        from safetensors.torch import save_file

        save_file(converted, str(file), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in converted.values())


def _cast_names(tensors: dict[str, np.ndarray]) -> set[str]:
    return {n for n, a in tensors.items() if a.dtype == np.float32 and not n.endswith("inv_freq")}
