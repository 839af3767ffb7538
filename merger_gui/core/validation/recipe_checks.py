"""Checks of a stage's own keys: method, unknown keys, dtypes, the models it names, its base_model."""

from __future__ import annotations

import difflib

from .. import quick_fixes as fixes
from ..dtypes import is_float_code, known_dtype_code
from ..methods import METHODS
from ..plan import config_donor_name
from .context import StageContext, closest, did_you_mean

KNOWN_KEYS = (
    "merge_method", "slices", "models", "base_model", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "name",
)


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
    for key, value in (("dtype", stage.dtype), ("out_dtype", stage.out_dtype)):
        if value is not None and not is_float_code(known_dtype_code(value)):
            ctx.add("error", "unknown-dtype",
                    f"{key} {value!r} is not a float dtype; use bfloat16, float16 or float32", key=key)
    if stage.slices is not None and stage.models is not None:
        ctx.add("error", "slices-and-models", "the stage has both slices and models; keep one of them")
    if not stage.slices and not stage.models:
        ctx.add("error", "no-models", "the stage merges no model: add slices or models", key="slices")


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


def check_base(ctx: StageContext) -> None:
    stage, spec = ctx.stage, ctx.spec
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
