"""Pure edits of a mergekit-moe recipe: each returns a new :class:`MoeRecipe` (one undo step in the designer).

The expert edits take ``shared=True`` to act on ``shared_experts`` (Qwen MoE) instead of the
routed ``experts``, so both lists are edited the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .errors import RecipeError
from .moe_recipe import GATE_MODES, MoeExpert, MoeRecipe

DTYPES = ("bfloat16", "float16", "float32")  # mergekit-moe's output dtypes; None: the base's
ARCHITECTURES = ("mixtral", "qwen")  # what ``architecture`` may name here; None: chosen as mergekit-moe does


def new_moe(models: Sequence[str]) -> MoeRecipe:
    """A recipe to start from: the first of ``models`` as the base and each of them an expert
    (empty ``models``: no base and no expert yet), two experts per token where there are two."""
    models = list(dict.fromkeys(models))
    return MoeRecipe(base_model=models[0] if models else "", experts=tuple(MoeExpert(m) for m in models),
                     experts_per_token=max(1, min(2, len(models))))


def set_base_model(recipe: MoeRecipe, name: str) -> MoeRecipe:
    """``recipe`` built on base model ``name``."""
    return replace(recipe, base_model=name)


def set_gate_mode(recipe: MoeRecipe, gate_mode: str) -> MoeRecipe:
    """``recipe`` with its routers computed by ``gate_mode``.

    Raises:
        RecipeError: not one of mergekit-moe's gate modes.
    """
    if gate_mode not in GATE_MODES:
        raise RecipeError(f"unknown gate_mode {gate_mode!r}; use one of {', '.join(GATE_MODES)}")
    return replace(recipe, gate_mode=gate_mode)


def set_experts_per_token(recipe: MoeRecipe, count: int) -> MoeRecipe:
    """``recipe`` routing each token to ``count`` experts."""
    return replace(recipe, experts_per_token=count)


def set_dtype(recipe: MoeRecipe, dtype: str | None) -> MoeRecipe:
    """``recipe`` written in ``dtype`` (None: the base model's)."""
    return replace(recipe, dtype=dtype or None)


def set_architecture(recipe: MoeRecipe, architecture: str | None) -> MoeRecipe:
    """``recipe`` asking mergekit-moe for ``architecture`` (None: its own choice)."""
    return replace(recipe, architecture=architecture or None)


def add_expert(recipe: MoeRecipe, source_model: str, *, shared: bool = False) -> MoeRecipe:
    """``recipe`` with a new last expert from donor ``source_model``, without prompts yet."""
    return _with_experts(recipe, (*_experts(recipe, shared), MoeExpert(source_model)), shared)


def remove_expert(recipe: MoeRecipe, index: int, *, shared: bool = False) -> MoeRecipe:
    """``recipe`` without expert ``index``."""
    experts = list(_experts(recipe, shared))
    del experts[index]
    return _with_experts(recipe, tuple(experts), shared)


def move_expert(recipe: MoeRecipe, index: int, to: int, *, shared: bool = False) -> MoeRecipe:
    """``recipe`` with expert ``index`` moved to position ``to`` (clamped to the list); the router's
    rows follow the experts' order."""
    experts = list(_experts(recipe, shared))
    expert = experts.pop(index)
    experts.insert(max(0, min(to, len(experts))), expert)
    return _with_experts(recipe, tuple(experts), shared)


def set_expert_prompts(recipe: MoeRecipe, index: int, positive: Sequence[str], negative: Sequence[str], *,
                       shared: bool = False) -> MoeRecipe:
    """``recipe`` with expert ``index``'s positive and negative prompts replaced (blank ones dropped)."""
    expert = replace(_experts(recipe, shared)[index], positive_prompts=tuple(p for p in positive if p.strip()),
                     negative_prompts=tuple(p for p in negative if p.strip()))
    return _with_expert(recipe, index, expert, shared)


def set_expert_source(recipe: MoeRecipe, index: int, source_model: str, *, shared: bool = False) -> MoeRecipe:
    """``recipe`` with expert ``index`` taken from donor ``source_model``."""
    return _with_expert(recipe, index, replace(_experts(recipe, shared)[index], source_model=source_model), shared)


def _experts(recipe: MoeRecipe, shared: bool) -> tuple[MoeExpert, ...]:
    return recipe.shared_experts if shared else recipe.experts


def _with_expert(recipe: MoeRecipe, index: int, expert: MoeExpert, shared: bool) -> MoeRecipe:
    experts = list(_experts(recipe, shared))
    experts[index] = expert
    return _with_experts(recipe, tuple(experts), shared)


def _with_experts(recipe: MoeRecipe, experts: tuple[MoeExpert, ...], shared: bool) -> MoeRecipe:
    return replace(recipe, shared_experts=experts) if shared else replace(recipe, experts=experts)
