"""What a frankenMoE build writes, as mergekit-moe 0.1.5 writes it: tensors, config.json, parameter counts.

Mixtral output fuses each layer's experts (``experts.gate_up_proj`` / ``experts.down_proj``,
the transformers 5 layout); Qwen MoE output (Qwen2-MoE) keeps one tensor per expert and adds
the shared expert with its one-row gate, and gives Llama/Mistral bases the zero attention
biases Qwen2 expects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .donor import DonorInfo, TensorInfo, is_buffer
from .errors import RecipeError
from .moe_recipe import MIXTRAL, QWEN, MoeRecipe, expert_mlp_names, output_architecture

# Qwen2's layer tensors in mergekit's order (its qwen2.json), which Qwen MoE output follows.
QWEN2_LAYER_TENSORS = (
    "input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "post_attention_layernorm.weight", "self_attn.k_proj.bias", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_proj.bias", "self_attn.q_proj.weight", "self_attn.v_proj.bias", "self_attn.v_proj.weight",
)
OUTPUT_CLASSES = {MIXTRAL: ("MixtralForCausalLM", "mixtral"), QWEN: ("Qwen2MoeForCausalLM", "qwen2_moe")}


@dataclass(frozen=True)
class MoeParameters:
    """Parameter counts of the MoE output."""

    total: int
    active: int  # per token: all but the routed experts, plus experts_per_token of them (shared ones always)
    expert_mlp: int  # one expert's MLP over every layer


def moe_architecture(recipe: MoeRecipe, base: DonorInfo) -> str:
    """mergekit-moe's output architecture for ``recipe`` on ``base`` (see :func:`output_architecture`)."""
    return output_architecture(recipe, base.model_type)


def moe_parameters(recipe: MoeRecipe, base: DonorInfo) -> MoeParameters:
    """Total and active parameters of the MoE built from ``base``'s shapes."""
    mlp = sum(base.tensor_map[n].numel for n in expert_mlp_names(base))
    total = sum(t.numel for t in moe_output_tensors(recipe, base))
    return MoeParameters(total=total, active=total - (len(recipe.experts) - recipe.experts_per_token) * mlp,
                         expert_mlp=mlp)


def moe_output_dtype(recipe: MoeRecipe, base: DonorInfo) -> str:
    """torch name of the output's dtype: the recipe's ``dtype``, else the base's."""
    from .dtypes import dtype_of

    try:
        return dtype_of(recipe.dtype or base.dtype).torch_name
    except ValueError:
        raise RecipeError(f"unknown dtype {recipe.dtype!r}") from None


def moe_output_tensors(recipe: MoeRecipe, base: DonorInfo) -> tuple[TensorInfo, ...]:
    """The output's tensors in the order mergekit-moe writes them."""
    from .dtypes import dtype_code

    code = dtype_code(moe_output_dtype(recipe, base))
    if moe_architecture(recipe, base) == MIXTRAL:
        shapes = _mixtral_shapes(len(recipe.experts), base)
    else:
        shapes = _qwen_shapes(len(recipe.experts), base)
    return tuple(TensorInfo(name, shape, code) for name, shape in shapes)


def _mixtral_shapes(experts: int, base: DonorInfo) -> list[tuple[str, tuple[int, ...]]]:
    """The base's non-MLP tensors, then per layer the fused ``experts.gate_up_proj`` (E, 2·I, H)
    and ``experts.down_proj`` (E, H, I), then the routers ``mlp.gate.weight`` (E, H)."""
    e, h, i = experts, base.hidden_size, base.intermediate_size
    shapes = [(t.name, t.shape) for t in base.tensors if ".mlp." not in t.name and not is_buffer(t.name)]
    for layer in range(base.num_layers):
        prefix = f"model.layers.{layer}.mlp"
        shapes += [(f"{prefix}.experts.gate_up_proj", (e, 2 * i, h)), (f"{prefix}.experts.down_proj", (e, h, i))]
    return shapes + [(f"model.layers.{layer}.mlp.gate.weight", (e, h)) for layer in range(base.num_layers)]


def _qwen_shapes(experts: int, base: DonorInfo) -> list[tuple[str, tuple[int, ...]]]:
    """Qwen2's tensors from the base, each MLP tensor as ``mlp.experts.N.*`` per expert and
    ``mlp.shared_expert.*``, then per layer the router (E, H) and the shared expert's gate (1, H)."""
    tensors = base.tensor_map
    shapes = [("model.embed_tokens.weight", tensors["model.embed_tokens.weight"].shape)]
    for layer in range(base.num_layers):
        for part in QWEN2_LAYER_TENSORS:
            name = f"model.layers.{layer}.{part}"
            if part.startswith("mlp."):
                shape = tensors[name].shape
                shapes += [(name.replace(".mlp.", f".mlp.experts.{k}."), shape) for k in range(experts)]
                shapes.append((name.replace(".mlp.", ".mlp.shared_expert."), shape))
            elif name in tensors:
                shapes.append((name, tensors[name].shape))
            elif part.endswith("_proj.bias"):  # a Llama or Mistral base: zeros
                heads = base.num_heads if part.startswith("self_attn.q") else base.num_kv_heads
                shapes.append((name, (heads * base.head_dim,)))
    shapes += [(n, tensors[n].shape) for n in ("model.norm.weight", "lm_head.weight") if n in tensors]
    for layer in range(base.num_layers):
        prefix = f"model.layers.{layer}.mlp"
        shapes += [(f"{prefix}.gate.weight", (experts, base.hidden_size)),
                   (f"{prefix}.shared_expert_gate.weight", (1, base.hidden_size))]
    return shapes


def moe_output_config(recipe: MoeRecipe, base: DonorInfo) -> dict[str, Any]:
    """config.json of the MoE: the base's with the keys mergekit-moe sets for its output."""
    dtype = moe_output_dtype(recipe, base)
    config = dict(base.config)
    per_token = recipe.experts_per_token
    common = dict(sliding_window=None, output_router_logits=False, router_aux_loss_coef=0.001,
                  torch_dtype=dtype, dtype=dtype)
    if moe_architecture(recipe, base) == MIXTRAL:
        config.setdefault("head_dim", base.head_dim)  # transformers writes the derived value
        config.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=len(recipe.experts),
                      num_experts_per_tok=per_token, router_jitter_noise=0.0, **common)
        return config
    if base.model_type != "qwen2":  # a Llama or Mistral config carries its head_dim over
        config.setdefault("head_dim", base.head_dim)
    config.setdefault("max_window_layers", 28)  # Qwen2MoeConfig's defaults where the base has none
    config.setdefault("attention_dropout", 0.0)
    config.update(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", num_experts=len(recipe.experts),
                  num_experts_per_tok=per_token, decoder_sparse_step=1, norm_topk_prob=True, use_sliding_window=False,
                  shared_expert_intermediate_size=base.intermediate_size, moe_intermediate_size=base.intermediate_size,
                  qkv_bias=True, mlp_only_layers=[], **common)
    return config


def moe_output_donor(recipe: MoeRecipe, base: DonorInfo) -> DonorInfo:
    """The MoE as a donor (facts and tensors), for the estimator."""
    architecture, model_type = OUTPUT_CLASSES[moe_architecture(recipe, base)]
    return replace(base, ref=f"MoE of {base.display_name}", kind="stage", architecture=architecture,
                   family=model_type, model_type=model_type, dtype=moe_output_dtype(recipe, base),
                   tensors=moe_output_tensors(recipe, base), config=moe_output_config(recipe, base),
                   sliding_window=None, sliding_window_layers=None, path=None, download_bytes=0, adapter=None)

