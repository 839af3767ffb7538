"""Checks of a stage's own keys: method, unknown keys, dtypes, the models it names, its base_model."""

from __future__ import annotations

import difflib
import re

from .. import quick_fixes as fixes
from ..dtypes import is_float_code, known_dtype_code
from ..methods import METHODS
from ..plan import config_donor_name
from .context import StageContext, closest, did_you_mean

KNOWN_KEYS = (
    "merge_method", "slices", "models", "modules", "base_model", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "name",
)
SLICE_KEYS = ("sources", "base_model", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
MODEL_KEYS = ("model", "parameters")
MODULE_KEYS = ("slices", "models", "parameters")


def check_keys(ctx: StageContext) -> None:
    stage = ctx.stage
    if ctx.spec is None:
        hint = did_you_mean(stage.merge_method.lower(), METHODS) or f" known: {', '.join(METHODS)}"
        close = closest(stage.merge_method.lower(), METHODS)
        ctx.add("error", "unknown-method", f"unknown merge_method {stage.merge_method!r};{hint}",
                key="merge_method", fix=fixes.method_fix(ctx.index, close) if close else None)
    for key in stage.extra:
        hint = did_you_mean(key, KNOWN_KEYS)
        ctx.add("warning", "unknown-key", f"unknown key {key!r} is ignored by mergekit;{hint or ' remove it'}",
                key=key)
    check_nested_keys(ctx)
    for key, value in (("dtype", stage.dtype), ("out_dtype", stage.out_dtype)):
        if value is not None and not is_float_code(known_dtype_code(value)):
            ctx.add("error", "unknown-dtype",
                    f"{key} {value!r} is not a float dtype; use bfloat16, float16 or float32", key=key)
    if stage.slices is not None and stage.models is not None:
        ctx.add("error", "slices-and-models", "the stage has both slices and models; keep one of them")
    if not stage.slices and not stage.models:
        ctx.add("error", "no-models", "the stage merges no model: add slices or models", key="slices")


def check_nested_keys(ctx: StageContext) -> None:
    """Keys inside modules, slices, sources and models entries that mergekit's schema drops."""
    stage = ctx.stage
    if stage.module is not None:
        for key in stage.module.extra:
            _ignored_key(ctx, key, "the module", MODULE_KEYS, None, None)
    for si, slice_ in enumerate(stage.slices or ()):
        for key in slice_.extra:
            _ignored_key(ctx, key, "a slice", SLICE_KEYS, si, None)
        for ki, source in enumerate(slice_.sources):
            for key in source.extra:
                _ignored_key(ctx, key, "a source", SOURCE_KEYS, si, ki, source.model)
    for ki, entry in enumerate(stage.models or ()):
        for key in entry.extra:
            _ignored_key(ctx, key, "a models entry", MODEL_KEYS, None, ki, entry.model)


def _ignored_key(ctx: StageContext, key: str, where: str, known: tuple[str, ...], si: int | None,
                 ki: int | None, model: str | None = None) -> None:
    if key == "revision" and model is not None:
        advice = f" write the revision into the reference: `model: {model.partition('@')[0]}@REVISION`"
    elif key == "residual_weight":
        advice = " mergekit 0.1.5 reads it but never uses it; remove it"
    else:
        advice = did_you_mean(key, known) or " remove it"
    ctx.add("warning", "unknown-key", f"{key!r} inside {where} is ignored by mergekit;{advice}", si, ki, key)


def check_models(ctx: StageContext) -> None:
    stage_names = set(ctx.recipe.stage_names()) - {ctx.stage.name}
    for model in ctx.stage.referenced_models:
        if model in stage_names or model in ctx.donors or model in ctx.reported:
            continue
        si, ki = ctx.location_of(model)
        close = difflib.get_close_matches(model, sorted(stage_names), n=1, cutoff=0.6)
        if close and "/" not in model and not model.startswith("profile:"):
            ctx.reported.add(model)
            ctx.add("error", "unknown-stage",
                    f"{model!r} is neither a donor nor a stage of this recipe; did you mean the stage "
                    f"{close[0]!r}? (mergekit would try to download {model!r})", si, ki, "model",
                    fixes.stage_reference_fix(ctx.index, model, close[0]))
        elif model in ctx.donor_errors:
            ctx.reported.add(model)
            ctx.add("error", "donor-unavailable", ctx.donor_errors[model], si, ki, "model")


def check_base_spelling(ctx: StageContext) -> None:
    """A base_model naming the same folder as a merged model, spelled differently (``//x`` vs ``/x``,
    ``x/`` vs ``x``): mergekit compares references as written and loads it as another model."""
    stage = ctx.stage
    bases = {b for b in [stage.base_model, *(s.base_model for s in stage.slices or ())] if b}
    models = {src.model for s in stage.slices or () for src in s.sources} | {e.model for e in stage.models or ()}
    for base in sorted(bases - models):
        same = sorted(m for m in models if _folder_key(m) == _folder_key(base))
        if same:
            ctx.add("warning", "base-model-spelling",
                    f"base_model {base!r} and {same[0]!r} name the same model spelled differently; mergekit "
                    f"compares them as written and treats the base as another model: write {same[0]!r} in both",
                    key="base_model")


def _folder_key(reference: str) -> str:
    """A reference with repeated and trailing slashes dropped (``//home/m/`` → ``/home/m``)."""
    return re.sub(r"/+", "/", reference).rstrip("/") or reference


def check_base(ctx: StageContext) -> None:
    stage, spec = ctx.stage, ctx.spec
    check_base_spelling(ctx)
    config = config_donor_name(stage)
    if spec is not None and spec.needs_base and not stage.base_model:
        if stage.models is not None or any(not s.base_model for s in stage.slices or ()):
            ctx.add("error", "missing-base-model",
                    f"{spec.name} needs a base_model; add `base_model: {config or 'MODEL'}` "
                    "(one of the merged models)", key="base_model",
                    fix=fixes.base_model_fix(ctx.index, config) if config else None)
        return
    if not stage.base_model and len(stage.referenced_models) > 1 and config:
        source = f"config.json and the tokenizer come from {config} (the first slice's model; mergekit picks " \
                 "one at random)"
        # A base changes what these merge (deltas to it), so it is no way to pin the config.
        advice = f"a base_model would change how {spec.name} merges: make sure the models share their config " \
            "and tokenizer" if spec is not None and spec.name in ("nuslerp", "multislerp") else \
            f"add `base_model: {config}` to make it explicit"
        spherical = spec is not None and spec.name in ("nuslerp", "multislerp")
        fix = None if spherical else fixes.base_model_fix(ctx.index, config)
        ctx.add("warning", "no-base-model", f"no base_model: {source}; {advice}", key="base_model", fix=fix)
