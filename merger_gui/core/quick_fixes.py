"""Quick fixes: the one edit a validation finding names, as data, and the pure edit that does it.

A :class:`Fix` is plain data (it compares, prints and goes to JSON like the finding that
carries it); :func:`apply_fix` turns it into a new recipe with the edits of
:mod:`.slice_edits`, :mod:`.stage_edits` and :mod:`.parameter_edits`. Build one with the
constructors below, never by hand, so ``edit`` and ``args`` always agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .parameter_edits import ParamLocation, move_rule, rename_rule
from .recipe import Recipe, Stage
from .stage_edits import rename_references, set_base_model, set_tokenizer_source

FixArg = str | int | None


@dataclass(frozen=True)
class Fix:
    """What to do about a finding: ``label`` says it ("add `base_model: X`"), ``edit`` names the
    pure edit of stage ``stage`` and ``args`` are its arguments."""

    label: str
    edit: str
    stage: int
    args: tuple[FixArg, ...] = ()


def _location(args: tuple[FixArg, ...]) -> ParamLocation:
    """The parameter location of a rule fix (its first three arguments)."""
    slice_, source, model = args[:3]
    return ParamLocation(slice_, source, model)  # type: ignore[arg-type]


def base_model_fix(stage: int, model: str | None) -> Fix:
    """Set the stage's ``base_model`` to ``model`` (None removes it)."""
    label = f"add `base_model: {model}`" if model else "remove base_model"
    return Fix(label, "set-base-model", stage, (model,))


def stage_reference_fix(stage: int, old: str, new: str) -> Fix:
    """Point every reference to ``old`` (a misnamed stage) at stage ``new``, in every stage that uses it."""
    return Fix(f"point the source at stage {new!r}", "rename-reference", stage, (old, new))


def filter_fix(stage: int, loc: ParamLocation, name: str, rule: int, old: str, new: str) -> Fix:
    """Rename the filter of rule ``rule`` of parameter ``name`` at ``loc``."""
    return Fix(f"rename filter {old!r} to {new!r}", "rename-filter", stage,
               (loc.slice_index, loc.source_index, loc.model_index, name, rule, new))


def move_rule_fix(stage: int, loc: ParamLocation, name: str, rule: int, to: int, label: str) -> Fix:
    """Move rule ``rule`` of parameter ``name`` at ``loc`` to position ``to``."""
    return Fix(label, "move-rule", stage, (loc.slice_index, loc.source_index, loc.model_index, name, rule, to))


def reversed_range_fix(stage: int, slice_: int, source: int, start: int, end: int) -> Fix:
    """Write a reversed ``layer_range`` the right way round."""
    return Fix(f"write it as [{end}, {start}]", "set-range", stage, (slice_, source, end, start))


def method_fix(stage: int, method: str) -> Fix:
    """Replace a misspelt ``merge_method``."""
    return Fix(f"use merge_method {method!r}", "set-method", stage, (method,))


def tokenizer_base_fix(stage: int) -> Fix:
    """Rebuild the stage's vocabulary from the base model's tokenizer."""
    return Fix("add `tokenizer_source: base`", "tokenizer-source", stage, ("base",))


def _rename_reference(recipe: Recipe, fix: Fix) -> Recipe:
    old, new = str(fix.args[0]), str(fix.args[1])
    stages = tuple(s if s.name == new else rename_references(s, old, new) for s in recipe.stages)
    return replace(recipe, stages=stages)


def _swap_range(stage: Stage, args: tuple[FixArg, ...]) -> Stage:
    slice_index, source_index, start, end = (int(a) for a in args)  # type: ignore[arg-type]
    slices = list(stage.slices or ())
    sources = list(slices[slice_index].sources)
    sources[source_index] = replace(sources[source_index], layer_range=(start, end))
    slices[slice_index] = replace(slices[slice_index], sources=tuple(sources))
    return replace(stage, slices=tuple(slices))


def _rename_filter(stage: Stage, args: tuple[FixArg, ...]) -> Stage:
    return rename_rule(stage, _location(args), str(args[3]), int(args[4] or 0), str(args[5]))


def _move_rule(stage: Stage, args: tuple[FixArg, ...]) -> Stage:
    return move_rule(stage, _location(args), str(args[3]), int(args[4] or 0), int(args[5] or 0))


_STAGE_EDITS: dict[str, Callable[[Stage, tuple[FixArg, ...]], Stage]] = {
    "set-base-model": lambda stage, args: set_base_model(stage, None if args[0] is None else str(args[0])),
    "rename-filter": _rename_filter,
    "move-rule": _move_rule,
    "set-range": _swap_range,
    "set-method": lambda stage, args: replace(stage, merge_method=str(args[0])),
    "tokenizer-source": lambda stage, args: set_tokenizer_source(stage, str(args[0])),
}


def apply_fix(recipe: Recipe, fix: Fix) -> Recipe:
    """The recipe with ``fix`` done (unchanged when it no longer applies, e.g. the stage is gone)."""
    if fix.edit == "rename-reference":
        return _rename_reference(recipe, fix)
    if not 0 <= fix.stage < len(recipe.stages) or fix.edit not in _STAGE_EDITS:
        return recipe
    try:
        stage = _STAGE_EDITS[fix.edit](recipe.stages[fix.stage], fix.args)
    except (IndexError, KeyError, TypeError, ValueError):  # the recipe changed since the finding
        return recipe
    return recipe.replace_stage(fix.stage, stage)
