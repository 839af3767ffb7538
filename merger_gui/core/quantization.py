"""Bytes of a model's weights in a storage format: float dtypes, GGUF quant mixtures, EXL2.

GGUF sizes follow llama.cpp's quantizer (``llama_tensor_get_type`` in ``llama-quant.cpp``):
each tensor gets a ggml type from its role, its layer and the layer count, so a deeper
frankenmerge has a different effective bits-per-weight than its donors. We assume no
importance matrix and default quantizer options.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .donor import DonorInfo, TensorInfo, is_buffer, layer_index
from .errors import UserError


@dataclass(frozen=True)
class GGMLType:
    """A ggml storage type: ``type_size`` bytes per block of ``block_size`` elements."""

    name: str
    block_size: int
    type_size: int

    def row_bytes(self, elements: int) -> int:
        """Bytes of a row of ``elements`` values (llama.cpp's ``ggml_row_size``)."""
        return -(-elements // self.block_size) * self.type_size


GGML_TYPES = {t.name: t for t in (
    GGMLType("F32", 1, 4), GGMLType("F16", 1, 2), GGMLType("BF16", 1, 2),
    GGMLType("Q4_0", 32, 18), GGMLType("Q4_1", 32, 20), GGMLType("Q5_0", 32, 22),
    GGMLType("Q5_1", 32, 24), GGMLType("Q8_0", 32, 34),
    GGMLType("Q2_K", 256, 84), GGMLType("Q3_K", 256, 110), GGMLType("Q4_K", 256, 144),
    GGMLType("Q5_K", 256, 176), GGMLType("Q6_K", 256, 210),
    GGMLType("IQ4_XS", 256, 136), GGMLType("IQ4_NL", 32, 18),
)}

# llama.cpp file types (what ``llama-quantize`` is asked for) -> default ggml type.
GGUF_FILE_TYPES = {
    "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q5_0": "Q5_0",
    "Q5_1": "Q5_1", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_0": "Q4_0", "Q4_1": "Q4_1",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K",
    "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL",
}

# llama.cpp's fallback when a row length is not a multiple of the type's block size.
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0",
             "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

FLOAT_FORMATS = {
    "fp32": 4, "float32": 4, "f32": 4,
    "fp16": 2, "float16": 2, "f16": 2,
    "bf16": 2, "bfloat16": 2,
    "fp8": 1, "float8": 1, "float8_e4m3fn": 1,
}

# GGUF tensor roles, from a Hugging Face tensor name (substring, checked in order).
_ROLES = (
    ("embed_tokens", "token_embd"), ("wte", "token_embd"), ("embed_in", "token_embd"),
    ("lm_head", "output"), ("embed_out", "output"),
    ("qkv_proj", "attn_qkv"), ("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("gate_up_proj", "ffn_up"), ("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
    ("block_sparse_moe.gate.", "ffn_gate_inp"),
    (".w1.", "ffn_gate_exps"), (".w3.", "ffn_up_exps"), (".w2.", "ffn_down_exps"),
)
EXL2_PATTERN = re.compile(r"^(?:exl2[:\-_ ])(?P<bits>\d+(?:\.\d+)?)(?:bpw)?$|^(?P<bits2>\d+(?:\.\d+)?)bpw$")


def gguf_role(tensor_name: str) -> str:
    """The GGUF role of a Hugging Face tensor (``attn_v``, ``ffn_down``, ``token_embd``, ``norm``…).

    1-D tensors other than embeddings are ``norm`` or ``bias`` by name; unknown names
    give ``other``.
    """
    for marker, role in _ROLES:
        if marker in tensor_name:
            return role
    if tensor_name.endswith(".bias"):
        return "bias"
    if "norm" in tensor_name:
        return "norm"
    return "other"


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored: ``kind`` is ``stored``, ``float``, ``gguf`` or ``exl2``."""

    name: str
    kind: str
    bytes_per_param: int = 0  # float formats
    bits: float = 0.0  # exl2

    @property
    def label(self) -> str:
        """How tables show the format: ``as stored``, ``fp16``, ``Q4_K_M``, ``EXL2 4.65 bpw``."""
        return {"stored": "as stored", "exl2": f"EXL2 {self.bits:g} bpw"}.get(self.kind, self.name)


STORED = WeightFormat("stored", "stored")


def parse_weight_format(text: str | None) -> WeightFormat:
    """``fp16``, ``bf16``, ``fp32``, ``fp8``, a GGUF type (``Q4_K_M``), ``exl2:4.65`` or ``stored``.

    Raises:
        UserError: for an unknown format or an EXL2 bit rate outside 2–8.
    """
    if text is None or text.lower() in ("stored", "as-stored", "native"):
        return STORED
    key = text.strip()
    if key.lower() in FLOAT_FORMATS:
        size = FLOAT_FORMATS[key.lower()]
        name = {4: "fp32", 2: "bf16" if "b" in key.lower() else "fp16", 1: "fp8"}[size]
        return WeightFormat(name, "float", bytes_per_param=size)
    if key.upper() in GGUF_FILE_TYPES:
        return WeightFormat(key.upper(), "gguf")
    match = EXL2_PATTERN.match(key.lower())
    if match:
        bits = float(match["bits"] or match["bits2"])
        if not 2.0 <= bits <= 8.0:
            raise UserError(f"EXL2 bits per weight must be between 2 and 8, not {bits:g}")
        return WeightFormat(f"exl2:{bits:g}", "exl2", bits=bits)
    known = ", ".join(["fp32", "fp16", "bf16", "fp8", *GGUF_FILE_TYPES, "exl2:BITS"])
    raise UserError(f"unknown weight format {text!r} (known: {known})")


@dataclass(frozen=True)
class GGUFContext:
    """Model facts llama.cpp's type choice depends on."""

    num_layers: int
    n_gqa: int  # attention heads per KV head
    n_expert: int
    is_70b: bool  # llama.cpp's LLM_TYPE_70B: 80 layers with GQA
    has_output: bool  # an untied lm_head exists

    @classmethod
    def of(cls, model: DonorInfo) -> GGUFContext:
        """The facts of ``model``."""
        n_gqa = model.num_heads // model.num_kv_heads if model.num_kv_heads else 1
        experts = int(model.config.get("num_local_experts") or 1)
        return cls(model.num_layers, n_gqa, experts,
                   model.num_layers == 80 and n_gqa > 1, model.has_lm_head)


def _use_more_bits(i: int, n: int) -> bool:
    # llama.cpp's rule for the layers that get more bits in *_M mixtures (C integer division).
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def gguf_tensor_type(name: str, shape: tuple[int, ...], file_type: str, ctx: GGUFContext) -> str:
    """The ggml type llama.cpp's quantizer gives tensor ``name`` for ``file_type`` (no imatrix);
    for the types ``export-gguf`` writes (Q8_0, Q4_0) the type that export gives it."""
    if file_type in ("Q8_0", "Q4_0"):
        return gguf_export_tensor_type(name, shape, file_type.lower(), not ctx.has_output)
    role = gguf_role(name)
    if len(shape) < 2 or role in ("norm", "bias", "ffn_gate_inp"):
        return "F32"  # convert_hf_to_gguf stores these as F32; the quantizer leaves them
    base = GGUF_FILE_TYPES[file_type]
    chosen = _mixture_type(role, layer_index(name) or 0, file_type, base, ctx)
    return _compatible_type(chosen, shape[-1])


def _mixture_type(role: str, i: int, ft: str, t: str, ctx: GGUFContext) -> str:
    n = ctx.num_layers
    moe8 = ctx.n_expert == 8
    if role == "output" or (role == "token_embd" and not ctx.has_output):
        return "Q8_0" if t == "Q8_0" else "Q6_K"
    if role == "token_embd":
        return t
    if role == "attn_v":
        return "Q8_0" if moe8 else _attn_v_type(i, ft, t, ctx)
    if role == "attn_k":
        return "Q8_0" if moe8 else t
    if role in ("ffn_down", "ffn_down_exps"):
        return _ffn_down_type(i, n, ft, t)
    if role == "attn_output":
        if moe8:
            moe_types = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS")
            return "Q5_K" if ft in moe_types else t
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ft, t)
    if role == "attn_qkv":
        return {"Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(ft, t)
    return t


def _attn_v_type(i: int, ft: str, t: str, ctx: GGUFContext) -> str:
    if ft == "Q2_K":
        t = "Q4_K" if ctx.n_gqa >= 4 else "Q3_K"
    elif ft == "Q3_K_M":
        t = "Q5_K" if i < 2 else "Q4_K"
    elif ft == "Q3_K_L" or (ft in ("IQ4_NL", "IQ4_XS") and ctx.n_gqa >= 4):
        t = "Q5_K"
    elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, ctx.num_layers):
        t = "Q6_K"
    elif ft == "Q4_K_S" and i < 4:
        t = "Q5_K"
    return "Q5_K" if ctx.is_70b and t in ("Q3_K", "Q4_K") else t


def _ffn_down_type(i: int, n: int, ft: str, t: str) -> str:
    if ft == "Q2_K":
        return "Q3_K"
    if ft == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"
    if ft == "Q3_K_L":
        return "Q5_K"
    if ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
        return "Q6_K"
    if ft in ("IQ4_NL", "IQ4_XS", "Q4_K_S") and i < n // 8:
        return "Q5_K"
    return t


def _compatible_type(t: str, row_length: int) -> str:
    if row_length % GGML_TYPES[t].block_size == 0:
        return t
    fallback = _FALLBACK.get(t, "F16")
    return fallback if row_length % GGML_TYPES[fallback].block_size == 0 else "F16"


def gguf_tensor_bytes(info: TensorInfo, file_type: str, ctx: GGUFContext) -> int:
    """Bytes of one tensor in a GGUF file of ``file_type``."""
    ggml = GGML_TYPES[gguf_tensor_type(info.name, info.shape, file_type, ctx)]
    rows = info.numel // info.shape[-1] if info.shape else 1
    return rows * ggml.row_bytes(info.shape[-1] if info.shape else 1)


def exl2_head_bits(bits: float) -> int:
    """ExLlamaV2's lm_head bit width: 6 bits up to 5.0 bpw, 8 bits from 6.0 on."""
    return 8 if bits >= 6.0 else 6


def _tensor_bytes(info: TensorInfo, fmt: WeightFormat, ctx: GGUFContext) -> int:
    if fmt.kind == "stored":
        return info.nbytes
    if fmt.kind == "gguf":
        return gguf_tensor_bytes(info, fmt.name, ctx)
    role = gguf_role(info.name)
    matrix = len(info.shape) >= 2 and role not in ("token_embd", "output")
    if fmt.kind == "float":
        # fp8 checkpoints quantise the linear layers; embeddings, head and norms stay 16-bit.
        size = fmt.bytes_per_param if fmt.bytes_per_param > 1 or matrix else 2
        return info.numel * size
    if role == "output":
        return -(-info.numel * exl2_head_bits(fmt.bits) // 8)
    if matrix:
        return int(info.numel * fmt.bits / 8)
    return info.numel * 2  # EXL2 keeps embeddings and norms in fp16


def parameter_tensors(model: DonorInfo) -> Iterable[TensorInfo]:
    """The model's parameters (buffers such as ``rotary_emb.inv_freq`` left out)."""
    return (t for t in model.tensors if not is_buffer(t.name))


def weight_bytes(model: DonorInfo, fmt: WeightFormat = STORED) -> int:
    """Bytes of the model's parameters in ``fmt`` (tensor data only, no file headers)."""
    if fmt.kind == "gguf" and fmt.name.lower() in GGUF_EXPORT_TYPES:
        return gguf_export_bytes(model, fmt.name.lower())
    ctx = GGUFContext.of(model)
    return sum(_tensor_bytes(t, fmt, ctx) for t in parameter_tensors(model))


def host_embedding_bytes(model: DonorInfo, fmt: WeightFormat) -> int:
    """Bytes of the untied token embeddings, which llama.cpp keeps in system RAM."""
    if not model.has_lm_head:
        return 0
    ctx = GGUFContext.of(model)
    return sum(_tensor_bytes(t, fmt, ctx) for t in parameter_tensors(model)
               if gguf_role(t.name) == "token_embd")


# What ``merger-gui export-gguf --type`` writes (engine/gguf_export.py) -> ggml type of its matrices.
GGUF_EXPORT_TYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
GGUF_EXTRA_TENSORS = {"llama3": "rope_freqs.weight"}  # rope type -> the F32 tensor llama.cpp adds


def gguf_export_tensor_type(name: str, shape: tuple[int, ...], export_type: str, tied: bool) -> str:
    """The ggml type ``export-gguf --type export_type`` writes tensor ``name`` (a Hugging Face name) in.

    As llama.cpp's convert_hf_to_gguf.py: 1-D tensors, norms, biases and MoE routers in F32,
    matrices in the chosen type, and F16 for a matrix whose rows are not whole blocks. q4_0
    keeps the output projection (the token embeddings when tied, ``tied``) in Q8_0, where
    llama-quantize uses Q6_K, which gguf-py cannot write.
    """
    role = gguf_role(name)
    if len(shape) < 2 or role in ("norm", "bias", "ffn_gate_inp"):
        return "F32"
    chosen = GGUF_EXPORT_TYPES[export_type]
    if chosen == "Q4_0" and (role == "output" or (role == "token_embd" and tied)):
        chosen = "Q8_0"
    return chosen if shape[-1] % GGML_TYPES[chosen].block_size == 0 else "F16"


def gguf_rope_type(config: Mapping[str, Any]) -> str:
    """The config's RoPE scaling type, lower case (``llama3``, ``linear``, ``yarn``…; empty for none)."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters")
    kind = (scaling.get("rope_type") or scaling.get("type")) if isinstance(scaling, Mapping) else None
    return "" if kind in (None, "default") else str(kind).lower()


def gguf_export_tensors(model: DonorInfo) -> tuple[TensorInfo, ...]:
    """The tensors ``export-gguf`` writes, by Hugging Face name, in file order.

    The parameters (Gemma's ``lm_head``, which llama.cpp never reads, left out), then the F32
    tensor llama.cpp generates for Llama-3.1-style RoPE scaling (``rope_freqs.weight``).
    """
    tensors = [t for t in parameter_tensors(model)
               if not (model.family.startswith("gemma") and t.name == "lm_head.weight")]
    extra = GGUF_EXTRA_TENSORS.get(gguf_rope_type(model.config))
    if extra and model.family == "llama":
        tensors.append(TensorInfo(extra, (model.head_dim // 2,), "F32"))
    return tuple(tensors)


def gguf_export_bytes(model: DonorInfo, export_type: str) -> int:
    """Bytes of tensor data ``export-gguf --type export_type`` writes for ``model``: exact."""
    tied = not model.has_lm_head
    total = 0
    for info in gguf_export_tensors(model):
        ggml = GGML_TYPES[gguf_export_tensor_type(info.name, info.shape, export_type, tied)]
        rows = info.numel // info.shape[-1]
        total += rows * ggml.row_bytes(info.shape[-1])
    return total
