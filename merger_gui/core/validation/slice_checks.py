"""Checks of slices: layer ranges, source lengths, how many sources the method takes and the base among them."""

from __future__ import annotations

from .. import quick_fixes as fixes
from ..plan import stage_slices
from ..recipe import Slice
from .context import StageContext

def check_slices(ctx: StageContext) -> None:
    for si, slice_ in enumerate(ctx.stage.slices or ()):
        if not slice_.sources:
            ctx.add("error", "no-sources", "the slice has no sources", si, key="sources")
            continue
        for ki, source in enumerate(slice_.sources):
            check_range(ctx, si, ki, source.model, source.start, source.end)
        lengths = sorted({s.num_layers for s in slice_.sources if s.num_layers >= 0})
        if len(lengths) > 1:
            detail = ", ".join(f"{s.model} {s.num_layers}" for s in slice_.sources)
            ctx.add("error", "unequal-source-lengths",
                    f"the slice's sources cover different numbers of layers ({detail}); "
                    "they pair layer by layer, so give every source the same length", si, key="layer_range")
        check_source_count(ctx, slice_, si)
    if ctx.stage.slices is None and ctx.stage.models:
        # The models form is one slice of every model (the base added when not listed).
        check_source_count(ctx, stage_slices(ctx.stage, {})[0], None)


def check_source_count(ctx: StageContext, slice_: Slice, si: int | None) -> None:
    """The number of sources the method takes, and the base among them where it needs one.

    ``si`` is None for the models form, whose one slice holds every model and the base.
    """
    spec = ctx.spec
    if spec is None:
        return
    count = len(slice_.sources)
    base = slice_.base_model or ctx.stage.base_model
    others = sum(1 for s in slice_.sources if s.model != base)
    this, key = ("this slice", "sources") if si is not None else ("the models list", "models")
    if spec.name == "passthrough" and count > 1:
        ctx.add("error", "passthrough-sources",
                f"a passthrough slice takes exactly one source, this one has {count}; "
                "split it into one slice per source", si, key=key)
    elif spec.name == "slerp" and count != 2:
        ctx.add("error", "slerp-sources",
                f"slerp merges exactly two models (the base and one other), {this} has {count}", si, key=key)
    elif spec.name == "nuslerp" and others != 2:
        ctx.add("error", "nuslerp-models",
                f"nuslerp merges exactly two models besides the base, {this} has {others}", si, key=key)
    elif spec.name == "multislerp" and others < 1:
        ctx.add("error", "multislerp-models",
                f"multislerp needs at least one model besides the base, {this} has none", si, key=key)
    elif spec.name == "model_stock" and count < spec.min_models:
        ctx.add("error", "too-few-models",
                f"model_stock needs the base and at least two other models, {this} has {count} in all",
                si, key=key)
    elif count < spec.min_models and si is not None:  # mergekit returns a lone base as is
        ctx.add("error", "too-few-models",
                f"{spec.name} needs at least {spec.min_models} models, {this} has {count}", si, key=key)
    models = [s.model for s in slice_.sources]
    if spec.name == "multislerp" and others == 1 and base in models:
        ctx.add("warning", "multislerp-lone-model",
                f"multislerp with base_model {base!r} and one other model returns that model unchanged "
                "(the base is only the centre of the sphere); remove base_model to interpolate both",
                si, key="base_model", fix=None if slice_.base_model else fixes.base_model_fix(ctx.index, None))
    repeated = sorted({m for m in models if models.count(m) > 1})
    if spec.name != "passthrough" and repeated:
        ctx.add("error", "duplicate-source",
                f"{', '.join(repeated)} appears more than once in {this}; {spec.name} merges distinct "
                "models (mergekit refuses duplicate inputs) — use another donor or passthrough", si, key=key)
    takes_base = spec.needs_base or spec.name in ("multislerp", "nuslerp")  # mergekit refuses an absent optional base
    if si is not None and takes_base and base and all(s.model != base for s in slice_.sources):
        ctx.add("error", "base-not-in-slice",
                f"base_model {base!r} is not a source of this slice; {spec.name} merges each source "
                f"against the base, so add {base!r} with the same layer_range length", si, key="base_model")


def check_range(ctx: StageContext, si: int, ki: int, model: str, start: int, end: int) -> None:
    if start > end:
        ctx.add("error", "reversed-range",
                f"layer_range [{start}, {end}] of {model} is reversed (mergekit would write "
                f"num_hidden_layers: {end - start}); write it as [{end}, {start}]", si, ki, "layer_range",
                fixes.reversed_range_fix(ctx.index, si, ki, start, end))
        return
    if start < 0:
        ctx.add("error", "negative-layer", f"layer_range [{start}, {end}] of {model} starts below layer 0",
                si, ki, "layer_range")
    if start == end:
        ctx.add("warning", "empty-slice",
                f"layer_range [{start}, {end}] of {model} selects no layer (the end is exclusive; "
                f"[{start}, {start + 1}] is layer {start} alone)", si, ki, "layer_range")
    donor = ctx.donor(model)
    if donor is not None and end > donor.num_layers:
        ctx.add("error", "range-past-end",
                f"layer_range [{start}, {end}] ends past the {donor.num_layers} layers of {model} "
                f"(layers 0–{donor.num_layers - 1}; the end is exclusive, at most {donor.num_layers})",
                si, ki, "layer_range")
