"""A frankenMoE recipe as mergekit-moe (mergekit 0.1.5) reads it: a base model and dense expert donors.

The YAML is one document with ``base_model``, ``experts`` (each a ``source_model`` with
``positive_prompts`` / ``negative_prompts``), ``gate_mode``, ``dtype``, ``experts_per_token``,
``shared_experts`` and ``architecture``; the ``experts:`` key tells it from a merge recipe.
The output is a Mixtral model: attention, norms and embeddings from the base, each layer's
MLP from every expert, and a router whose row per expert comes from that expert's prompts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .donor import DonorInfo, TensorInfo, is_buffer
from .errors import RecipeError

# hidden: the base model's hidden states on the prompts (last token); cheap_embed: their mean token
# embedding, the same for every layer; random / uniform_random: drawn (mergekit draws unseeded).
GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random")
RANDOM_GATE_MODES = ("random", "uniform_random")
MIXTRAL_FAMILIES = ("llama", "mistral")  # the dense families mergekit-moe turns into Mixtral
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")
RECIPE_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MoeExpert:
    """One expert: a dense donor whose MLPs become one expert of every layer."""

    source_model: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    residual_scale: float | None = None  # multiplies the expert's down_proj


@dataclass(frozen=True)
class MoeRecipe:
    """A mergekit-moe configuration (Mixtral output)."""

    base_model: str
    experts: tuple[MoeExpert, ...]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    architecture: str | None = None

    @property
    def referenced_models(self) -> tuple[str, ...]:
        """The base and the expert donors, each once, in order."""
        return tuple(dict.fromkeys([self.base_model, *(e.source_model for e in self.experts)]))


def is_moe_document(doc: Any) -> bool:
    """Whether a loaded YAML document is a mergekit-moe recipe (it has ``experts:``)."""
    return isinstance(doc, Mapping) and "experts" in doc


def is_moe_text(text: str) -> bool:
    """Whether recipe text is a single mergekit-moe document."""
    from .recipe_load import load_documents

    try:
        documents = load_documents(text)
    except RecipeError:
        return False
    return len(documents) == 1 and is_moe_document(documents[0][0])


def load_moe_text(text: str) -> MoeRecipe:
    """Parse mergekit-moe YAML.

    Raises:
        RecipeError: unreadable YAML, more than one document, or a value mergekit-moe would refuse.
    """
    from .recipe_load import load_documents

    documents = load_documents(text)
    if len(documents) != 1:
        raise RecipeError("an MoE recipe is a single YAML document")
    return parse_moe(documents[0][0])


def parse_moe(doc: Mapping[str, Any]) -> MoeRecipe:
    """The recipe of one loaded mergekit-moe document."""
    _known_keys(doc, RECIPE_KEYS, "the MoE recipe")
    if doc.get("shared_experts"):
        raise RecipeError("shared_experts are not supported: Mixtral output has none (mergekit-moe refuses them too)")
    experts = doc.get("experts")
    if not isinstance(experts, list) or not experts:
        raise RecipeError("experts must be a list of {source_model, positive_prompts, negative_prompts}")
    per_token = doc.get("experts_per_token", 2)
    if not isinstance(per_token, int) or isinstance(per_token, bool):
        raise RecipeError(f"experts_per_token must be a whole number, not {per_token!r}")
    gate_mode = doc.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        raise RecipeError(f"unknown gate_mode {gate_mode!r}; use one of {', '.join(GATE_MODES)}")
    return MoeRecipe(
        base_model=_text(doc.get("base_model"), "base_model"),
        experts=tuple(_expert(e, i) for i, e in enumerate(experts)),
        gate_mode=gate_mode,
        dtype=_optional_text(doc.get("dtype"), "dtype"),
        experts_per_token=per_token,
        architecture=_optional_text(doc.get("architecture"), "architecture"),
    )


def _expert(item: Any, index: int) -> MoeExpert:
    if not isinstance(item, Mapping):
        raise RecipeError(f"expert {index + 1} must be a mapping with source_model and prompts")
    _known_keys(item, EXPERT_KEYS, f"expert {index + 1}")
    if item.get("noise_scale") is not None:
        raise RecipeError(f"expert {index + 1}: noise_scale is not supported (mergekit draws the noise unseeded)")
    scale = item.get("residual_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise RecipeError(f"expert {index + 1}: residual_scale must be a number")
    return MoeExpert(
        source_model=_text(item.get("source_model"), f"expert {index + 1} source_model"),
        positive_prompts=_prompts(item.get("positive_prompts"), index, "positive_prompts"),
        negative_prompts=_prompts(item.get("negative_prompts"), index, "negative_prompts"),
        residual_scale=None if scale is None else float(scale),
    )


def _prompts(value: Any, index: int, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RecipeError(f"expert {index + 1}: {key} must be a list of strings")
    return tuple(str(p) for p in value)


def _known_keys(doc: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [str(k) for k in doc if k not in known]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{key} must be a model name or folder")
    return str(value)


def _optional_text(value: Any, key: str) -> str | None:
    return None if value is None else _text(value, key)


def dump_moe(recipe: MoeRecipe) -> str:
    """mergekit-moe YAML for ``recipe`` (keys in mergekit's order; defaults written out)."""
    from .recipe_dump import round_trip_yaml

    doc: dict[str, Any] = {"base_model": recipe.base_model, "gate_mode": recipe.gate_mode}
    if recipe.dtype:
        doc["dtype"] = recipe.dtype
    doc["experts_per_token"] = recipe.experts_per_token
    if recipe.architecture:
        doc["architecture"] = recipe.architecture
    doc["experts"] = [_expert_doc(e) for e in recipe.experts]
    stream = io.StringIO()
    round_trip_yaml().dump(doc, stream)
    return stream.getvalue()


def _expert_doc(expert: MoeExpert) -> dict[str, Any]:
    doc: dict[str, Any] = {"source_model": expert.source_model}
    if expert.positive_prompts:
        doc["positive_prompts"] = list(expert.positive_prompts)
    if expert.negative_prompts:
        doc["negative_prompts"] = list(expert.negative_prompts)
    if expert.residual_scale is not None:
        doc["residual_scale"] = expert.residual_scale
    return doc


def moe_problems(recipe: MoeRecipe, donors: Mapping[str, DonorInfo] | None = None) -> list[str]:
    """What mergekit-moe would refuse, one line each (empty when the recipe can be built).

    Without ``donors`` only the recipe itself is checked; with them, that every expert has the
    base's family and shapes.
    """
    problems = _recipe_problems(recipe)
    if donors is not None:
        problems += _donor_problems(recipe, donors)
    return problems


def _recipe_problems(recipe: MoeRecipe) -> list[str]:
    problems = []
    if recipe.experts_per_token < 1:
        problems.append("experts_per_token must be at least 1")
    if len(recipe.experts) < recipe.experts_per_token:
        problems.append(f"experts_per_token ({recipe.experts_per_token}) is more than the "
                        f"{len(recipe.experts)} experts")
    if recipe.architecture and not "mixtral".startswith(recipe.architecture.lower()):
        problems.append(f"architecture {recipe.architecture!r} is not supported; only Mixtral output is")
    if recipe.gate_mode in RANDOM_GATE_MODES:
        return problems
    missing = [i + 1 for i, e in enumerate(recipe.experts) if not e.positive_prompts]
    if missing:
        problems.append(f"expert {missing[0]} has no positive_prompts (gate_mode {recipe.gate_mode} needs them)")
    elif len({(e.positive_prompts, e.negative_prompts) for e in recipe.experts}) == 1:
        problems.append("every expert has the same prompts: the router could not tell them apart")
    if len(recipe.experts) > 1 and len({e.source_model for e in recipe.experts}) == 1:
        problems.append("every expert is the same model: the MoE would answer exactly like it, only larger")
    return problems


def _donor_problems(recipe: MoeRecipe, donors: Mapping[str, DonorInfo]) -> list[str]:
    base = donors.get(recipe.base_model)
    if base is None:
        return [f"base model {recipe.base_model} is not resolved"]
    if base.family not in MIXTRAL_FAMILIES:
        return [f"base model {recipe.base_model} is {base.family}; Mixtral output needs Llama or Mistral donors"]
    problems = []
    for expert in recipe.experts:
        donor = donors.get(expert.source_model)
        if donor is None:
            problems.append(f"expert {expert.source_model} is not resolved")
        elif donor.family != base.family:
            problems.append(f"expert {expert.source_model} is {donor.family}, the base is {base.family}")
        elif _mlp_shapes(donor) != _mlp_shapes(base):
            problems.append(f"expert {expert.source_model}'s MLP shapes differ from the base's "
                            f"(layers, hidden or intermediate size)")
    return problems


def _mlp_shapes(donor: DonorInfo) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((n, donor.tensor_map[n].shape) for n in sorted(expert_mlp_names(donor)))


def expert_mlp_names(donor: DonorInfo) -> list[str]:
    """Names of the dense MLP tensors an expert gives, layer by layer."""
    return [f"model.layers.{layer}.mlp.{part}.weight" for layer in range(donor.num_layers) for part in MLP_NAMES
            if f"model.layers.{layer}.mlp.{part}.weight" in donor.tensor_map]


def resolve_moe_donors(recipe: MoeRecipe, overrides: Mapping[str, str], base_dir: Path | None = None
                       ) -> tuple[dict[str, DonorInfo], dict[str, str]]:
    """Resolve the base and experts like a merge recipe's models (``--donor`` overrides, folders
    next to the recipe first). Returns (donors by name, one-line errors by name)."""
    from .resolve import PROFILE_PREFIX, _local_to, resolve_donor
    from .errors import DonorError

    donors: dict[str, DonorInfo] = {}
    errors: dict[str, str] = {}
    for name in recipe.referenced_models:
        ref = overrides.get(name, name)
        if name not in overrides and base_dir is not None and not ref.startswith(PROFILE_PREFIX):
            ref = _local_to(base_dir, ref)
        try:
            donors[name] = resolve_donor(ref, name=name)
        except DonorError as exc:
            errors[name] = str(exc)
    return donors, errors


@dataclass(frozen=True)
class MoeParameters:
    """Parameter counts of the MoE output."""

    total: int
    active: int  # per token: everything but the experts, plus experts_per_token experts' MLPs
    expert_mlp: int  # one expert's MLP over every layer


def moe_parameters(recipe: MoeRecipe, base: DonorInfo) -> MoeParameters:
    """Total and active parameters of the Mixtral built from ``base``'s shapes."""
    mlp = sum(base.tensor_map[n].numel for n in expert_mlp_names(base))
    shared = base.param_count - mlp
    router = len(recipe.experts) * base.hidden_size * base.num_layers
    return MoeParameters(total=shared + router + len(recipe.experts) * mlp,
                         active=shared + router + recipe.experts_per_token * mlp, expert_mlp=mlp)


def moe_output_dtype(recipe: MoeRecipe, base: DonorInfo) -> str:
    """torch name of the output's dtype: the recipe's ``dtype``, else the base's."""
    from .dtypes import dtype_of

    try:
        return dtype_of(recipe.dtype or base.dtype).torch_name
    except ValueError:
        raise RecipeError(f"unknown dtype {recipe.dtype!r}") from None


def moe_output_tensors(recipe: MoeRecipe, base: DonorInfo) -> tuple[TensorInfo, ...]:
    """The Mixtral's tensors as mergekit-moe 0.1.5 writes them (transformers 5 layout): the base's
    non-MLP tensors, then per layer the fused ``experts.gate_up_proj`` (E, 2·I, H) and
    ``experts.down_proj`` (E, H, I), then the routers ``mlp.gate.weight`` (E, H)."""
    from .dtypes import dtype_code

    code = dtype_code(moe_output_dtype(recipe, base))
    e, h, i = len(recipe.experts), base.hidden_size, base.intermediate_size
    tensors = [TensorInfo(t.name, t.shape, code) for t in base.tensors
               if ".mlp." not in t.name and not is_buffer(t.name)]
    for layer in range(base.num_layers):
        prefix = f"model.layers.{layer}.mlp"
        tensors += [TensorInfo(f"{prefix}.experts.gate_up_proj", (e, 2 * i, h), code),
                    TensorInfo(f"{prefix}.experts.down_proj", (e, h, i), code)]
    tensors += [TensorInfo(f"model.layers.{layer}.mlp.gate.weight", (e, h), code) for layer in range(base.num_layers)]
    return tuple(tensors)


def moe_output_config(recipe: MoeRecipe, base: DonorInfo) -> dict[str, Any]:
    """config.json of the Mixtral: the base's with mergekit-moe's Mixtral keys."""
    dtype = moe_output_dtype(recipe, base)
    config = dict(base.config)
    config.setdefault("head_dim", base.head_dim)  # transformers writes the derived value
    config.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=len(recipe.experts),
                  num_experts_per_tok=recipe.experts_per_token, sliding_window=None, output_router_logits=False,
                  router_aux_loss_coef=0.001, router_jitter_noise=0.0, torch_dtype=dtype, dtype=dtype)
    return config


def moe_output_donor(recipe: MoeRecipe, base: DonorInfo) -> DonorInfo:
    """The Mixtral as a donor (facts and tensors), for the estimator."""
    return replace(base, ref=f"MoE of {base.display_name}", kind="stage", architecture="MixtralForCausalLM",
                   family="mixtral", model_type="mixtral", dtype=moe_output_dtype(recipe, base),
                   tensors=moe_output_tensors(recipe, base), config=moe_output_config(recipe, base),
                   sliding_window=None, sliding_window_layers=None, path=None, download_bytes=0, adapter=None)


def set_expert_prompts(recipe: MoeRecipe, index: int, positive: tuple[str, ...],
                       negative: tuple[str, ...]) -> MoeRecipe:
    """``recipe`` with expert ``index``'s positive and negative prompts replaced (blank ones dropped)."""
    expert = replace(recipe.experts[index], positive_prompts=tuple(p for p in positive if p.strip()),
                     negative_prompts=tuple(p for p in negative if p.strip()))
    return _with_expert(recipe, index, expert)


def set_expert_source(recipe: MoeRecipe, index: int, source_model: str) -> MoeRecipe:
    """``recipe`` with expert ``index`` taken from donor ``source_model``."""
    return _with_expert(recipe, index, replace(recipe.experts[index], source_model=source_model))


def _with_expert(recipe: MoeRecipe, index: int, expert: MoeExpert) -> MoeRecipe:
    experts = list(recipe.experts)
    experts[index] = expert
    return replace(recipe, experts=tuple(experts))
