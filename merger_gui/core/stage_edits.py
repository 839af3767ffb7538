"""Pure edits of a stage's settings and of a recipe's stages.

Stage settings (merge method, base model, dtypes, tokenizer source, name) take a
:class:`Stage` and return a new one; stage list edits (add, remove, rename) take a
:class:`Recipe`. Switching the merge method converts the slices so the stage stays a
sensible recipe of the new method (see :func:`set_merge_method`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from .methods import METHODS, MethodSpec, method_spec
from .recipe import Parameters, Recipe, Slice, SliceSource, Stage
from .slice_edits import fit_range

# A model name, or an optional one (a base model): swapping keeps which.
_Name = TypeVar("_Name", str, "str | None")

TOKENIZER_SOURCES = ("base", "union")
# Values a required shared parameter gets when a method switch introduces it, by method.
# nearswap's ``t`` is a distance threshold (mergekit's reference merge uses 0.0001), not a ratio.
REQUIRED_DEFAULTS = {("slerp", "t"): 0.5, ("nearswap", "t"): 0.0001}
# Parameters a method reads on another scale than the others with that name: a switch resets them.
OWN_SCALE = {("nearswap", "t")}


def set_merge_method(stage: Stage, method: str, donors: tuple[str, ...] = (),
                     num_layers: dict[str, int] | None = None) -> Stage:
    """Switch the stage to ``method``, converting it so it stays sensible.

    * A slice with fewer sources than the method takes gets the same layer range of other
      donors (the base model first where the method needs one, then ``donors`` in order);
      more sources than the method takes are dropped from the end.
    * To passthrough each slice keeps its first source; the base model goes.
    * A method needing a base model gets the first donor when none is set; nuslerp and
      multislerp drop a base that would leave them fewer than two other models (they then
      interpolate the two; with the base, multislerp would return the other one unchanged).
    * A required shared parameter (slerp's ``t``) gets a default when absent; a required
      ``weight`` gives each model without one an equal share (1/N of the N models weighted),
      which averages the models or, without normalization, their deltas to the base.
    * Top-level parameters of the old method the new one does not know are dropped, and so are
      those it reads on another scale (slerp's ``t`` is a ratio, nearswap's a distance).

    Args:
        stage: The stage to convert.
        method: The new merge method's name.
        donors: Donors of the stage in preference order (its models first).
        num_layers: Layer counts of the donors, when known, to fit paired ranges.
    """
    old, new = method_spec(stage.merge_method), METHODS[method]
    donors = tuple(dict.fromkeys((*stage.referenced_models, *donors)))
    base = stage.base_model
    if new.max_models == 1:
        base = None
    elif new.needs_base and base is None and donors:
        base = donors[0]
    slices = None
    if stage.slices is not None:
        slices = tuple(_converted_slice(s, new, base, donors, num_layers or {}) for s in stage.slices)
    if new.name in ("nuslerp", "multislerp") and base is not None and _fewer_than_two_besides(stage, slices, base):
        base = None  # with a base and one other model multislerp returns that model unchanged
    parameters = stage.parameters
    known = {p.name for p in new.parameters}
    if old is not None:
        for p in old.parameters:
            rescaled = ((old.name, p.name) in OWN_SCALE) != ((new.name, p.name) in OWN_SCALE)
            if (p.name not in known or rescaled) and p.name in parameters:
                parameters = parameters.with_value(p.name, None)
    for p in new.shared_parameters:
        default = REQUIRED_DEFAULTS.get((new.name, p.name))
        if p.required and p.name not in parameters and default is not None:
            parameters = parameters.with_value(p.name, default)
    converted = replace(stage, merge_method=method, slices=slices, base_model=base, parameters=parameters)
    weight = new.parameter("weight")
    if weight is not None and weight.required and not weight.shared:
        converted = _with_equal_weights(converted, weight.non_base)
    return converted


def _converted_slice(slice_: Slice, new: MethodSpec, base: str | None, donors: tuple[str, ...],
                     layers: dict[str, int]) -> Slice:
    """``slice_`` with as many sources as ``new`` takes (the base among them where it needs one)."""
    sources = slice_.sources if new.max_models is None else slice_.sources[:new.max_models]
    if new.max_models == 1:
        return replace(slice_, sources=sources, base_model=None)
    slice_base = slice_.base_model or base
    wanted = (slice_base, *donors) if new.needs_base and slice_base else donors
    for model in dict.fromkeys(wanted):
        if not sources or len(sources) >= new.min_models:
            break
        if model not in {s.model for s in sources}:
            first = sources[0]
            sources += (SliceSource(model, fit_range(first.start, first.end, layers.get(model))),)
    return replace(slice_, sources=sources)


def _fewer_than_two_besides(stage: Stage, slices: tuple[Slice, ...] | None, base: str) -> bool:
    """Whether some slice (or the ``models:`` list) merges fewer than two models besides ``base``."""
    groups = [[s.model for s in slice_.sources] for slice_ in slices or ()]
    if slices is None and stage.models is not None:
        groups = [[e.model for e in stage.models]]
    return any(sum(1 for model in group if model != base) < 2 for group in groups)


def _equal_share(count: int) -> float:
    return round(1 / max(count, 1), 4)


def _with_equal_weights(stage: Stage, non_base: bool) -> Stage:
    """Each model with no ``weight`` in any scope gets 1/N, N the models weighted together."""
    def lacks_weight(*scopes: Parameters) -> bool:
        return all("weight" not in p for p in scopes)

    if stage.models is not None and stage.slices is None:
        weighted_models = [e for e in stage.models if not (non_base and e.model == stage.base_model)]
        share = _equal_share(len(weighted_models))
        models = tuple(replace(e, parameters=e.parameters.with_value("weight", share))
                       if e in weighted_models and lacks_weight(e.parameters, stage.parameters) else e
                       for e in stage.models)
        return replace(stage, models=models)
    slices = []
    for slice_ in stage.slices or ():
        base = slice_.base_model or stage.base_model
        weighted = [s for s in slice_.sources if not (non_base and s.model == base)]
        share = _equal_share(len(weighted))
        sources = tuple(replace(s, parameters=s.parameters.with_value("weight", share))
                        if s in weighted and lacks_weight(s.parameters, slice_.parameters, stage.parameters) else s
                        for s in slice_.sources)
        slices.append(replace(slice_, sources=sources))
    return replace(stage, slices=None if stage.slices is None else tuple(slices))


def set_base_model(stage: Stage, model: str | None) -> Stage:
    """Set (or clear, with None) the stage's ``base_model``."""
    return replace(stage, base_model=model or None)


def set_dtype(stage: Stage, dtype: str | None) -> Stage:
    """Set (or clear) the ``dtype`` the merge computes in."""
    return replace(stage, dtype=dtype or None)


def set_out_dtype(stage: Stage, dtype: str | None) -> Stage:
    """Set (or clear) the ``out_dtype`` the output is written in."""
    return replace(stage, out_dtype=dtype or None)


def set_tokenizer_source(stage: Stage, source: str | None) -> Stage:
    """Set (or clear) where the tokenizer comes from: ``base``, ``union`` or a model.

    A stage written with the ``tokenizer:`` form keeps that form (its ``source`` changes).
    """
    if stage.tokenizer is not None:
        return replace(stage, tokenizer=replace(stage.tokenizer, source=source or None))
    return replace(stage, tokenizer_source=source or None)


def rename_references(stage: Stage, old: str, new: str) -> Stage:
    """Replace every reference to model ``old`` by ``new`` in one stage (tokenizer included)."""

    def swap(name: _Name) -> _Name:
        return new if name == old else name

    slices = None if stage.slices is None else tuple(
        replace(s, base_model=swap(s.base_model),
                sources=tuple(replace(src, model=swap(src.model)) for src in s.sources))
        for s in stage.slices)
    models = None if stage.models is None else tuple(replace(m, model=swap(m.model)) for m in stage.models)
    tokenizer = stage.tokenizer
    if tokenizer is not None:
        tokens = tuple((token, replace(e, source=swap(e.source))) for token, e in tokenizer.tokens)
        tokenizer = replace(tokenizer, source=swap(tokenizer.source), tokens=tokens)
    return replace(stage, slices=slices, models=models, base_model=swap(stage.base_model),
                   tokenizer_source=swap(stage.tokenizer_source), tokenizer=tokenizer)


def unique_stage_name(recipe: Recipe, stem: str = "stage") -> str:
    """``stem-N`` with the smallest N no stage of ``recipe`` is named yet."""
    names = set(recipe.stage_names())
    n = 1
    while f"{stem}-{n}" in names:
        n += 1
    return f"{stem}-{n}"


def _named(recipe: Recipe) -> Recipe:
    """Every stage with a name (later stages refer to earlier ones by name)."""
    stages = list(recipe.stages)
    for i, stage in enumerate(stages):
        if not stage.name:
            stages[i] = replace(stage, name=unique_stage_name(Recipe(tuple(stages))))
    return replace(recipe, stages=tuple(stages))


def add_stage(recipe: Recipe, method: str = "passthrough", index: int | None = None) -> Recipe:
    """Insert an empty stage (at ``index``, default last), named uniquely; earlier stages get names."""
    recipe = _named(recipe)
    stage = Stage(method, slices=(), name=unique_stage_name(recipe))
    stages = list(recipe.stages)
    stages.insert(len(stages) if index is None else max(0, min(index, len(stages))), stage)
    return replace(recipe, stages=tuple(stages))


def remove_stage(recipe: Recipe, index: int) -> Recipe:
    """Remove stage ``index``; the last remaining stage is kept."""
    if len(recipe.stages) <= 1:
        return recipe
    return replace(recipe, stages=tuple(s for i, s in enumerate(recipe.stages) if i != index))


def rename_stage(recipe: Recipe, index: int, name: str) -> Recipe:
    """Rename stage ``index`` and the references to it in later stages.

    An empty name, or one another stage already has, leaves the recipe unchanged.
    """
    name = name.strip()
    old = recipe.stages[index].name
    if not name or name == old or name in recipe.stage_names():
        return recipe
    stages = list(recipe.stages)
    stages[index] = replace(stages[index], name=name)
    if old:
        for i in range(index + 1, len(stages)):
            stages[i] = rename_references(stages[i], old, name)
    return replace(recipe, stages=tuple(stages))


def stage_donors(recipe: Recipe, index: int, loaded: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Donors stage ``index`` may use: its models, earlier stages' names, then ``loaded`` ones."""
    stage = recipe.stages[index]
    earlier = tuple(s.name for s in recipe.stages[:index] if s.name)
    return tuple(dict.fromkeys((*stage.referenced_models, *earlier, *loaded)))
