"""Pure edits of a stage's settings and of a recipe's stages.

Stage settings (merge method, base model, dtypes, tokenizer source, name) take a
:class:`Stage` and return a new one; stage list edits (add, remove, rename) take a
:class:`Recipe`. Switching the merge method converts the slices so the stage stays a
sensible recipe of the new method (see :func:`set_merge_method`).
"""

from __future__ import annotations

from dataclasses import replace

from .methods import METHODS, method_spec
from .recipe import Recipe, SliceSource, Stage
from .slice_edits import fit_range

DTYPES = ("float16", "bfloat16", "float32")
TOKENIZER_SOURCES = ("base", "union")
# Values a required parameter gets when a method switch introduces it.
REQUIRED_DEFAULTS = {"t": 0.5}


def _partner(model: str, donors: tuple[str, ...]) -> str | None:
    return next((d for d in donors if d != model), None)


def set_merge_method(stage: Stage, method: str, donors: tuple[str, ...] = (),
                     num_layers: dict[str, int] | None = None) -> Stage:
    """Switch the stage to ``method``, converting it so it stays sensible.

    * To a method with at most two sources per slice (slerp) a one-source slice gets the
      same layer range of another donor (the first of ``donors`` it does not use); more
      sources than the method takes are dropped from the end.
    * To passthrough each slice keeps its first source; the base model goes.
    * A method needing a base model gets the first donor when none is set; a required
      shared parameter (slerp's ``t``) gets a default when absent.
    * Top-level parameters of the old method the new one does not know are dropped.

    Args:
        stage: The stage to convert.
        method: The new merge method's name.
        donors: Donors of the stage in preference order (its models first).
        num_layers: Layer counts of the donors, when known, to fit paired ranges.
    """
    old, new = method_spec(stage.merge_method), METHODS[method]
    layers = num_layers or {}
    donors = tuple(dict.fromkeys((*stage.referenced_models, *donors)))
    slices = None
    if stage.slices is not None:
        converted = []
        for slice_ in stage.slices:
            sources = slice_.sources
            if new.max_models is not None:
                sources = sources[:new.max_models]
            if new.max_models == 2 and len(sources) == 1:
                partner = _partner(sources[0].model, donors)
                if partner is not None:
                    first = sources[0]
                    sources += (SliceSource(partner, fit_range(first.start, first.end, layers.get(partner))),)
            converted.append(replace(slice_, sources=sources,
                                     base_model=None if new.max_models == 1 else slice_.base_model))
        slices = tuple(converted)
    base = stage.base_model
    if new.max_models == 1:
        base = None
    elif new.needs_base and base is None and donors:
        base = donors[0]
    known = {p.name for p in new.parameters}
    parameters = stage.parameters
    if old is not None:
        for p in old.parameters:
            if p.name not in known and p.name in parameters:
                parameters = parameters.with_value(p.name, None)
    for p in new.shared_parameters:
        if p.required and p.name not in parameters and p.name in REQUIRED_DEFAULTS:
            parameters = parameters.with_value(p.name, REQUIRED_DEFAULTS[p.name])
    return replace(stage, merge_method=method, slices=slices, base_model=base, parameters=parameters)


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

    def swap(name: str | None) -> str | None:
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
