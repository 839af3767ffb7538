"""Checks of parameters: kinds and ranges from the method's spec, rule order and filters, values the plan gives."""

from __future__ import annotations

import difflib
import math
import re

from .. import quick_fixes as fixes
from ..methods import parameter_default, parameter_facts
from ..parameter_edits import ParamLocation
from ..parameters import as_rule_list, resolve_parameter
from ..plan import StagePlan
from ..recipe import FilterRule, Gradient, Parameters, Scalar
from .context import ParamScope, StageContext, closest, did_you_mean

FLOAT32_MAX = 3.4028234663852886e38  # the merge computes in float32: a larger value becomes inf, then NaN

def check_parameter_values(ctx: StageContext, scope: ParamScope) -> None:
    for name, spec in scope.parameters.items():
        key = f"parameters.{name}"
        check_known_parameter(ctx, scope, name)
        rules = as_rule_list(spec)
        if rules:
            for r, rule in enumerate(rules):
                check_range_value(ctx, scope, name, rule.value, f"{key}[{r}].value")
            check_shadowing(ctx, scope, name, rules, key)
        else:
            check_range_value(ctx, scope, name, spec, key)  # type: ignore[arg-type]


def check_known_parameter(ctx: StageContext, scope: ParamScope, name: str) -> None:
    """A parameter the stage's method does not read: mergekit ignores it without a word."""
    spec = ctx.spec
    if spec is None or spec.parameter(name) is not None:
        return
    own = [p.name for p in spec.parameters]
    if spec.name == "model_stock" and name == "weight":
        advice = " model_stock weighs the models itself, from the angles between their deltas to the base"
    elif own:
        advice = did_you_mean(name, own) or f" its parameters are {', '.join(own)}"
    else:
        advice = f" {spec.name} takes no parameters"
    ctx.add("warning", "unknown-parameter", f"{spec.name} has no parameter {name!r}, so mergekit ignores it;{advice}",
            scope.slice, scope.source, f"parameters.{name}")


def check_range_value(ctx: StageContext, scope: ParamScope, name: str, value: Scalar | Gradient, key: str) -> None:
    """Kind and range of each point of a value, as the method's spec of ``name`` says."""
    points = [(f"{key}[{j}]", v) for j, v in enumerate(value)] if isinstance(value, tuple) else [(key, value)]
    method = ctx.stage.merge_method.lower()
    facts = parameter_facts(method, name)
    if facts is None:
        return
    if facts.kind == "bool":  # mergekit also reads 0 and 1 as false and true
        for point_key, v in points:
            if not isinstance(v, (bool, int, float)) or not isinstance(v, bool) and v not in (0, 1):
                ctx.add("error", "not-a-boolean", f"{name} must be true or false, {point_key} is {v!r}",
                        scope.slice, scope.source, point_key)
        return
    low, high = facts.valid
    for point_key, v in points:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            ctx.add("error", "not-a-number", f"{name} must be a finite number, {point_key} is {v!r}",
                    scope.slice, scope.source, point_key)
        elif not low <= v <= high:
            ctx.add("error", "value-out-of-range",
                    f"{name} = {v:g} at {point_key} is outside [{low:g}, {high:g}]", scope.slice,
                    scope.source, point_key)
        elif facts.kind == "float" and abs(v) > FLOAT32_MAX:
            ctx.add("error", "value-out-of-range",
                    f"{name} = {v:g} at {point_key} is beyond float32's ±3.4e38, in which the merge computes "
                    "(it would give inf and NaN weights)", scope.slice, scope.source, point_key)
        elif facts.kind == "int" and not float(v).is_integer():  # mergekit refuses a fractional count
            ctx.add("error", "not-a-whole-number", f"{name} must be a whole number, {point_key} is {v!r}",
                    scope.slice, scope.source, point_key)
        elif method == "nearswap" and name == "t" and v == 0:
            ctx.add("warning", "nearswap-zero-t",
                    f"t = 0 at {point_key}: nearswap divides t by the models' difference, which gives NaN "
                    "where they are equal (as in mergekit); use a small positive t", scope.slice,
                    scope.source, point_key)


def check_shadowing(ctx: StageContext, scope: ParamScope, name: str, rules: tuple[FilterRule, ...], key: str) -> None:
    for j, rule in enumerate(rules):
        for i, earlier in enumerate(rules[:j]):
            if _is_fallback(earlier):
                fix = "move the fallback rule to the end of the list"
                what = "the fallback (no filter)"
                move = (i, len(rules) - 1)
            elif not _is_fallback(rule) and earlier.filter in rule.filter:  # type: ignore[operator]
                fix = f"put {rule.filter!r} before {earlier.filter!r}"
                what = f"filter {earlier.filter!r}"
                move = (j, i)
            else:
                continue
            label = "the fallback rule" if _is_fallback(rule) else f"filter {rule.filter!r}"
            ctx.add("warning", "shadowed-rule",
                    f"rule {j + 1} of {name} ({label}) never applies: rule {i + 1}, {what}, matches its "
                    f"tensors first; {fix}", scope.slice, scope.source, f"{key}[{j}]",
                    fixes.move_rule_fix(ctx.index, _location(scope), name, *move, fix))
            break


def check_required_parameters(ctx: StageContext) -> None:
    """Required parameters with no value in any scope (per-tensor gaps are found after planning)."""
    spec, stage = ctx.spec, ctx.stage
    if spec is None:
        return
    for param in spec.parameters:
        if not param.required:
            continue
        if param.shared:
            present = _has(stage.parameters, param.name) or any(
                _has(s.parameters, param.name) or any(_has(x.parameters, param.name) for x in s.sources)
                for s in stage.slices or ())
            if not present:
                ctx.add("error", "missing-parameter",
                        f"{spec.name} needs `{param.name}` and the recipe gives none; add it under parameters",
                        key=f"parameters.{param.name}")
            continue
        for scope in ctx.scopes():
            if scope.source is None:
                continue
            model = ctx.scope_model(scope)
            base = ctx.scope_base(scope)
            if param.non_base and model == base:
                continue
            if not any(_has(p.parameters, param.name) for p in scope.chain):
                ctx.add("error", "missing-parameter",
                        f"{spec.name} needs `{param.name}` for every model; {model} has none",
                        scope.slice, scope.source, f"parameters.{param.name}")


def check_filters(ctx: StageContext, tensor_names: set[str]) -> None:
    if not tensor_names:
        return
    candidates = _name_fragments(tensor_names)
    models = ", ".join(m for m, _ in ctx.known_models())
    for scope in ctx.scopes():
        for name, spec in scope.parameters.items():
            for r, rule in enumerate(as_rule_list(spec)):
                filter_ = rule.filter
                if filter_ is None or _is_fallback(rule) or any(filter_ in t for t in tensor_names):
                    continue
                close = closest(filter_, candidates)
                fix = fixes.filter_fix(ctx.index, _location(scope), name, r, filter_, close) if close else None
                ctx.add("warning", "filter-no-match",
                        f"filter {filter_!r} of {name} matches no tensor of {models}, so the rule never "
                        f"applies{fallback_note(ctx, scope, name, filter_, candidates, tensor_names)}",
                        scope.slice, scope.source, f"parameters.{name}[{r}].filter", fix)


def fallback_note(ctx: StageContext, scope: ParamScope, name: str, filter_: str, candidates: list[str],
                  tensor_names: set[str]) -> str:
    close = difflib.get_close_matches(filter_, candidates, n=1, cutoff=0.6)
    if not close:
        return ""
    target = min(t for t in tensor_names if close[0] in t)
    found = resolve_parameter(name, target, 0.0, scope.chain, parameter_default(ctx.stage.merge_method, name))
    if found.setting is not None:
        gets = _show(found.setting)
    else:
        gets = "no value" if found.value is None else f"the default {_show(found.value)}"
    return f": {target} gets {gets} instead; did you mean {close[0]!r}?"


def check_planned_parameters(ctx: StageContext, plan: StagePlan) -> None:
    """Required parameters that some tensors get no value for (every rule's filter missed them)."""
    spec = ctx.spec
    if spec is None or any(f.code == "missing-parameter" for f in ctx.findings):
        return
    for param in spec.parameters:
        if not param.required:
            continue
        if param.shared:
            gaps = [t.name for t in plan.tensors if param.name not in t.parameters]
        else:
            gaps = [t.name for t in plan.tensors for s in t.sources
                    if param.name not in s.parameters and not (param.non_base and s.model == ctx.base_of(t))]
        if gaps:
            ctx.add("error", "missing-parameter",
                    f"`{param.name}` has no value for {len(gaps)} tensor(s), e.g. {gaps[0]}: no rule matches "
                    f"them; add a fallback rule without filter at the end", key=f"parameters.{param.name}")


def check_normalized_weights(ctx: StageContext, plan: StagePlan) -> None:
    """Weights that sum to zero where the method divides by their sum (mergekit writes inf/NaN)."""
    method = plan.merge_method.lower()
    if method not in ("linear", "task_arithmetic", "dare_linear", "breadcrumbs", "della_linear", "multislerp"):
        return
    switch = "normalize_weights" if method == "multislerp" else "normalize"
    fewest = 2 if method == "multislerp" else 1  # multislerp returns a lone model as is
    for tensor in plan.tensors:
        if not tensor.parameters.get(switch, parameter_default(method, switch)):
            continue
        weights = [s.parameters["weight"] for s in tensor.sources if "weight" in s.parameters]
        numbers = [w for w in weights if isinstance(w, (int, float))]
        if len(weights) >= fewest and len(numbers) == len(weights) and abs(sum(numbers)) < 1e-8:
            ctx.add("error", "weights-sum-to-zero",
                    f"the weights of {tensor.name} sum to zero and {switch}: true divides by their sum "
                    f"(mergekit writes inf/NaN); change a weight or set {switch}: false",
                    key="parameters.weight")
            return


def check_della_epsilon(ctx: StageContext, plan: StagePlan) -> None:
    """DELLA draws keep-probabilities in density ± epsilon, which must stay inside (0, 1)."""
    method = plan.merge_method.lower()
    if method not in ("della", "della_linear"):
        return
    for tensor in plan.tensors:
        for source in tensor.sources:
            density = source.parameters.get("density", parameter_default(method, "density"))
            epsilon = source.parameters.get("epsilon", parameter_default(method, "epsilon"))
            if not isinstance(density, (int, float)) or not isinstance(epsilon, (int, float)) \
                    or not 0 < density < 1:
                continue  # other checks report non-numbers; density 0 or 1 draws nothing
            if not (density + epsilon < 1 and density - epsilon > 0):
                ctx.add("error", "della-epsilon",
                        f"{source.model} at {tensor.name}: density {density:g} ± epsilon {epsilon:g} leaves "
                        "(0, 1); DELLA needs density - epsilon > 0 and density + epsilon < 1",
                        key="parameters.epsilon")
                return


def check_whole_numbers(ctx: StageContext, plan: StagePlan) -> None:
    """Count parameters a gradient reads as a fraction for some tensor (mergekit refuses them)."""
    if any(f.code == "not-a-whole-number" for f in ctx.findings):
        return
    counts = [p.name for p in ctx.spec.parameters if p.kind == "int"] if ctx.spec else []
    for name in counts:
        for tensor in plan.tensors:
            value = tensor.parameters.get(name)
            if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
                ctx.add("error", "not-a-whole-number",
                        f"{name} must be a whole number, but its gradient gives {value!r} for {tensor.name}; "
                        "use a gradient whose values at every layer are whole, or filter rules",
                        key=f"parameters.{name}")
                return


def _is_fallback(rule: FilterRule) -> bool:
    return rule.filter is None or rule.filter == "*"


def _has(parameters: Parameters, name: str) -> bool:
    return parameters.get(name, ()) != ()


def _location(scope: ParamScope) -> ParamLocation:
    """Where a scope's parameters are, as the parameter edits address them."""
    if scope.slice is None and scope.source is not None:
        return ParamLocation(model_index=scope.source)  # a ``models:`` entry
    return ParamLocation(scope.slice, scope.source)


def _name_fragments(tensor_names: set[str]) -> list[str]:
    """Dotted runs of up to three name parts without layer numbers: ``model.norm``, ``self_attn``…"""
    fragments: set[str] = set()
    for name in {re.sub(r"\.\d+\.", ".N.", n) for n in tensor_names}:
        parts = name.split(".")
        for i in range(len(parts)):
            for j in range(i + 1, min(len(parts), i + 3) + 1):
                run = parts[i:j]
                if "N" not in run and run[-1] not in ("weight", "bias"):
                    fragments.add(".".join(run))
    return sorted(fragments)


def _show(value: Scalar | Gradient) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
