"""A frankenMoE recipe as mergekit-moe (mergekit 0.1.5) reads it: a base model and dense expert donors.

The YAML is one document with ``base_model``, ``experts`` (each a ``source_model`` with
``positive_prompts`` / ``negative_prompts``), ``gate_mode``, ``dtype``, ``experts_per_token``,
``shared_experts`` and ``architecture``; the ``experts:`` key tells it from a merge recipe.
The output takes attention, norms and embeddings from the base, each layer's MLP from every
expert, and a router whose row per expert comes from that expert's prompts. mergekit-moe picks
the output architecture from the recipe and the donors' model type (:func:`output_architecture`);
this tool builds two of its four: Mixtral (no shared expert) and Qwen MoE (Qwen2-MoE, one gated
shared expert).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .donor import DonorInfo
from .errors import RecipeError

# hidden: the base model's hidden states on the prompts (last token; hidden_last the same, hidden_avg their
# mean over the tokens); cheap_embed: their mean token embedding, the same for every layer;
# random / uniform_random: drawn (mergekit draws unseeded).
GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random", "hidden_avg", "hidden_last")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")
RECIPE_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")

# mergekit-moe 0.1.5's output architectures, in its order of preference, with the model types they take.
MIXTRAL, DEEPSEEK, QWEN, QWEN3 = "Mixtral", "DeepSeek MoE", "Qwen MoE", "Qwen3 MoE"
INPUT_MODEL_TYPES = {MIXTRAL: ("llama", "mistral"), DEEPSEEK: ("llama", "mistral"),
                     QWEN: ("llama", "mistral", "qwen2"), QWEN3: ("qwen3",)}
BUILT_ARCHITECTURES = (MIXTRAL, QWEN)


@dataclass(frozen=True)
class MoeExpert:
    """One expert: a dense donor whose MLPs become one expert of every layer."""

    source_model: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    residual_scale: float | None = None  # multiplies the expert's down_proj
    noise_scale: float | None = None  # std of the Gaussian noise added to the expert's MLP weights


@dataclass(frozen=True)
class MoeRecipe:
    """A mergekit-moe configuration."""

    base_model: str
    experts: tuple[MoeExpert, ...]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    architecture: str | None = None
    shared_experts: tuple[MoeExpert, ...] = ()  # always active; Qwen MoE output takes exactly one

    @property
    def referenced_models(self) -> tuple[str, ...]:
        """The base, the expert and the shared expert donors, each once, in order."""
        experts = (*self.experts, *self.shared_experts)
        return tuple(dict.fromkeys([self.base_model, *(e.source_model for e in experts)]))


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
    experts = doc.get("experts")
    if not isinstance(experts, list) or not experts:
        raise RecipeError("experts must be a list of {source_model, positive_prompts, negative_prompts}")
    shared = doc.get("shared_experts") or []
    if not isinstance(shared, list):
        raise RecipeError("shared_experts must be a list of {source_model, positive_prompts, negative_prompts}")
    per_token = doc.get("experts_per_token", 2)
    if not isinstance(per_token, int) or isinstance(per_token, bool):
        raise RecipeError(f"experts_per_token must be a whole number, not {per_token!r}")
    gate_mode = doc.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        raise RecipeError(f"unknown gate_mode {gate_mode!r}; use one of {', '.join(GATE_MODES)}")
    return MoeRecipe(
        base_model=_text(doc.get("base_model"), "base_model"),
        experts=tuple(_expert(e, f"expert {i + 1}") for i, e in enumerate(experts)),
        gate_mode=gate_mode,
        dtype=_optional_text(doc.get("dtype"), "dtype"),
        experts_per_token=per_token,
        architecture=_optional_text(doc.get("architecture"), "architecture"),
        shared_experts=tuple(_expert(e, f"shared expert {i + 1}") for i, e in enumerate(shared)),
    )


def _expert(item: Any, where: str) -> MoeExpert:
    if not isinstance(item, Mapping):
        raise RecipeError(f"{where} must be a mapping with source_model and prompts")
    _known_keys(item, EXPERT_KEYS, where)
    return MoeExpert(
        source_model=_text(item.get("source_model"), f"{where} source_model"),
        positive_prompts=_prompts(item.get("positive_prompts"), where, "positive_prompts"),
        negative_prompts=_prompts(item.get("negative_prompts"), where, "negative_prompts"),
        residual_scale=_number(item.get("residual_scale"), where, "residual_scale"),
        noise_scale=_number(item.get("noise_scale"), where, "noise_scale"),
    )


def _number(value: Any, where: str, key: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RecipeError(f"{where}: {key} must be a number")
    return None if value is None else float(value)


def _prompts(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RecipeError(f"{where}: {key} must be a list of strings")
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
    """mergekit-moe YAML for ``recipe`` (keys in mergekit's order; defaults written out).

    Raises:
        RecipeError: no base model or no expert yet (mergekit-moe reads no such recipe).
    """
    from .recipe_dump import round_trip_yaml

    if not recipe.base_model or not recipe.experts:
        raise RecipeError("choose a base model and add an expert first: mergekit-moe reads no recipe without them")

    doc: dict[str, Any] = {"base_model": recipe.base_model, "gate_mode": recipe.gate_mode}
    if recipe.dtype:
        doc["dtype"] = recipe.dtype
    doc["experts_per_token"] = recipe.experts_per_token
    if recipe.architecture:
        doc["architecture"] = recipe.architecture
    doc["experts"] = [_expert_doc(e) for e in recipe.experts]
    if recipe.shared_experts:
        doc["shared_experts"] = [_expert_doc(e) for e in recipe.shared_experts]
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
    if expert.noise_scale is not None:
        doc["noise_scale"] = expert.noise_scale
    return doc


def output_architecture(recipe: MoeRecipe, model_type: str | None = None) -> str:
    """The output mergekit-moe 0.1.5 builds: ``architecture`` narrows its four by name prefix, the
    recipe and the donors' ``model_type`` (None: not known yet) rule some out, Mixtral wins when it
    fits, else the first that does.

    Raises:
        RecipeError: no architecture fits, or mergekit-moe would pick one this tool does not build.
    """
    named = [a for a in INPUT_MODEL_TYPES if a.lower().startswith((recipe.architecture or "").lower())]
    if not named:
        raise RecipeError(f"architecture {recipe.architecture!r} names none of mergekit-moe's outputs "
                          f"({', '.join(INPUT_MODEL_TYPES)})")
    refusals = {a: _refusal(a, recipe, model_type) for a in named}
    fitting = [a for a, refusal in refusals.items() if refusal is None]
    if not fitting:
        raise RecipeError("no MoE output fits: " + "; ".join(str(r) for r in refusals.values()))
    chosen = MIXTRAL if MIXTRAL in fitting else fitting[0]
    if chosen not in BUILT_ARCHITECTURES:
        hint = " (give the shared expert positive_prompts for Qwen MoE)" if chosen == DEEPSEEK else ""
        raise RecipeError(f"mergekit-moe would build {chosen} output here, which this tool does not "
                          f"build: it builds {' and '.join(BUILT_ARCHITECTURES)}{hint}")
    return chosen


def _refusal(architecture: str, recipe: MoeRecipe, model_type: str | None) -> str | None:
    """Why mergekit-moe's ``architecture`` cannot build ``recipe`` (None when it can)."""
    shared = recipe.shared_experts
    if architecture in (MIXTRAL, QWEN3) and shared:
        return f"{architecture} has no shared experts"
    if architecture == DEEPSEEK and len(shared) > 1:
        return "DeepSeek MoE takes at most one shared expert"
    if architecture == DEEPSEEK and shared and (shared[0].positive_prompts or shared[0].negative_prompts):
        return "DeepSeek MoE cannot gate a shared expert (it has prompts)"
    if architecture == QWEN and len(shared) != 1:
        return f"Qwen MoE takes exactly one shared expert, not {len(shared)}"
    if architecture == QWEN and recipe.gate_mode != "random" and not shared[0].positive_prompts:
        return "Qwen MoE needs the shared expert's positive_prompts"
    types = INPUT_MODEL_TYPES[architecture]
    if model_type is not None and model_type not in types:
        return f"{architecture} takes {' or '.join(types)} donors, not {model_type}"
    return None


def moe_problems(recipe: MoeRecipe, donors: Mapping[str, DonorInfo] | None = None) -> list[str]:
    """What mergekit-moe would refuse (or this tool does not build), one line each; empty when
    the recipe can be built.

    Without ``donors`` only the recipe itself is checked; with them, that every expert has the
    base's model type and shapes, and that an output architecture takes them.
    """
    problems = _recipe_problems(recipe)
    if donors is not None:
        problems += [p for p in _donor_problems(recipe, donors) if p not in problems]
    return problems


def _recipe_problems(recipe: MoeRecipe) -> list[str]:
    problems = [] if recipe.base_model else ["choose a base model"]
    if not recipe.experts:  # a recipe being written in the designer
        return [*problems, "add an expert: mergekit-moe needs at least one"]
    if recipe.experts_per_token < 1:
        problems.append("experts_per_token must be at least 1")
    if len(recipe.experts) < recipe.experts_per_token:
        problems.append(f"experts_per_token ({recipe.experts_per_token}) is more than the "
                        f"{len(recipe.experts)} experts")
    try:
        output_architecture(recipe)
    except RecipeError as error:
        problems.append(str(error))
    if recipe.gate_mode == "random":  # mergekit-moe checks the prompts of every other mode
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
        return [f"base model {recipe.base_model} is not resolved"] if recipe.base_model else []
    try:
        output_architecture(recipe, base.model_type)
    except RecipeError as error:
        return [str(error)]
    problems = []
    for expert in (*recipe.experts, *recipe.shared_experts):
        donor = donors.get(expert.source_model)
        if donor is None:
            problems.append(f"expert {expert.source_model} is not resolved")
        elif donor.model_type != base.model_type:
            problems.append(f"expert {expert.source_model} is {donor.model_type}, the base is {base.model_type}")
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
