"""Pure edits of curve parameters (``t``, ``weight``, ``density``…): points, rules, presets,
invert, mirror and copy (the shapes and fits themselves live in :mod:`.gradient_fit`).

Every function takes a :class:`Stage` and returns a new one. A parameter is addressed by a
:class:`ParamLocation` (top level, a slice, a slice's source or a ``models:`` entry) and its
name; its value is edited as a list of :class:`FilterRule` s. A bare scalar or gradient is
one fallback rule, and is written back bare while it stays a single fallback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .gradient_fit import DECIMALS, insert_anchor, invert, mirror, preset_gradient
from .methods import FRACTION, Bounds, parameter_facts
from .parameters import as_rule_list, interpolate_gradient
from .recipe import FilterRule, Gradient, Parameters, ParamValue, Scalar, Stage



@dataclass(frozen=True)
class ParamLocation:
    """Where a parameter lives: top level (all None), slice ``slice_index``, its source
    ``source_index``, or ``models:`` entry ``model_index``."""

    slice_index: int | None = None
    source_index: int | None = None
    model_index: int | None = None

    @property
    def is_top_level(self) -> bool:
        return self.slice_index is None and self.model_index is None


TOP_LEVEL = ParamLocation()


def value_bounds(method: str, name: str) -> Bounds:
    """The range ``method``'s parameter ``name`` is edited and drawn in (the spec's edit bounds)."""
    facts = parameter_facts(method, name)
    return facts.edit if facts else FRACTION


def drag_bounds(stage: Stage, loc: ParamLocation, name: str) -> Bounds:
    """The range points of ``name`` at ``loc`` move in: its edit bounds, widened to the points
    the recipe already has there so that an out-of-range point can be moved back."""
    low, high = value_bounds(stage.merge_method, name)
    values = [v for rule in get_rules(stage, loc, name) for v in points(rule.value)]
    return min([low, *values]), max([high, *values])


def clamp(value: float, bounds: Bounds) -> float:
    """``value`` clamped to ``bounds`` and rounded to a readable precision."""
    low, high = bounds
    return round(min(high, max(low, float(value))), DECIMALS)


def _parameters(stage: Stage, loc: ParamLocation) -> Parameters:
    if loc.model_index is not None:
        return (stage.models or ())[loc.model_index].parameters
    if loc.slice_index is None:
        return stage.parameters
    slice_ = (stage.slices or ())[loc.slice_index]
    if loc.source_index is None:
        return slice_.parameters
    return slice_.sources[loc.source_index].parameters


def _with_parameters(stage: Stage, loc: ParamLocation, params: Parameters) -> Stage:
    if loc.model_index is not None:
        models = list(stage.models or ())
        models[loc.model_index] = replace(models[loc.model_index], parameters=params)
        return replace(stage, models=tuple(models))
    if loc.slice_index is None:
        return replace(stage, parameters=params)
    slices = list(stage.slices or ())
    slice_ = slices[loc.slice_index]
    if loc.source_index is None:
        slices[loc.slice_index] = replace(slice_, parameters=params)
    else:
        sources = list(slice_.sources)
        sources[loc.source_index] = replace(sources[loc.source_index], parameters=params)
        slices[loc.slice_index] = replace(slice_, sources=tuple(sources))
    return replace(stage, slices=tuple(slices))


def get_parameter(stage: Stage, loc: ParamLocation, name: str) -> ParamValue | None:
    """The raw value of ``name`` at ``loc`` (None when not set there)."""
    return _parameters(stage, loc).get(name)


def set_parameter(stage: Stage, loc: ParamLocation, name: str, value: ParamValue | None) -> Stage:
    """Set (or with None, remove) parameter ``name`` at ``loc``."""
    return _with_parameters(stage, loc, _parameters(stage, loc).with_value(name, value))


def is_rule_list(value: ParamValue | None) -> bool:
    return bool(as_rule_list(value))


def as_rules(value: ParamValue | None) -> tuple[FilterRule, ...]:
    """A parameter value as rules; a bare scalar or gradient is one fallback rule."""
    if value is None or value == ():
        return ()
    if is_rule_list(value):
        return value  # type: ignore[return-value]
    return (FilterRule(value),)  # type: ignore[arg-type]


def get_rules(stage: Stage, loc: ParamLocation, name: str) -> tuple[FilterRule, ...]:
    """The rules of ``name`` at ``loc``."""
    return as_rules(get_parameter(stage, loc, name))


def _set_rules(stage: Stage, loc: ParamLocation, name: str, rules: tuple[FilterRule, ...]) -> Stage:
    before = get_parameter(stage, loc, name)
    if not rules:
        return set_parameter(stage, loc, name, None)
    if not is_rule_list(before) and len(rules) == 1 and rules[0].filter is None:
        return set_parameter(stage, loc, name, rules[0].value)  # keep the bare form
    return set_parameter(stage, loc, name, rules)


def _replace_rule(stage: Stage, loc: ParamLocation, name: str, index: int, rule: FilterRule) -> Stage:
    rules = list(get_rules(stage, loc, name))
    rules[index] = rule
    return _set_rules(stage, loc, name, tuple(rules))


def points(value: Scalar | Gradient) -> tuple[float, ...]:
    """The control points of a rule value: a gradient's entries, or a scalar as one point."""
    if isinstance(value, tuple):
        return tuple(float(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ()
    return (float(value),)


def set_curve_point(stage: Stage, loc: ParamLocation, name: str, rule_index: int,
                    point_index: int, value: float) -> Stage:
    """Set point ``point_index`` of rule ``rule_index`` (a scalar is point 0), clamped."""
    rule = get_rules(stage, loc, name)[rule_index]
    new = clamp(value, drag_bounds(stage, loc, name))
    if isinstance(rule.value, tuple):
        values = list(rule.value)
        values[point_index] = new
        return _replace_rule(stage, loc, name, rule_index, replace(rule, value=tuple(values)))
    if point_index != 0:
        raise IndexError(f"a scalar has one point, not {point_index + 1}")
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=new))


def resample(values: tuple[float, ...], count: int) -> Gradient:
    """``count`` evenly spaced samples of the curve of ``values`` (its ends kept)."""
    if count == 1:
        return (round(float(interpolate_gradient(values, 0.0)), DECIMALS),)
    return tuple(round(float(interpolate_gradient(values, i / (count - 1))), DECIMALS) for i in range(count))


def add_point(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Give rule ``rule_index`` one more point, resampling its curve so the shape is kept.

    Gradient points are evenly spaced, so a new point cannot sit at an arbitrary ``x``;
    a scalar becomes a flat two-point gradient.
    """
    rule = get_rules(stage, loc, name)[rule_index]
    values = points(rule.value)
    new = (values[0], values[0]) if not isinstance(rule.value, tuple) else resample(values, len(values) + 1)
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=new))


def remove_point(stage: Stage, loc: ParamLocation, name: str, rule_index: int, point_index: int) -> Stage:
    """Remove one gradient point; the last point of a rule cannot be removed."""
    rule = get_rules(stage, loc, name)[rule_index]
    if not isinstance(rule.value, tuple) or len(rule.value) <= 1:
        raise ValueError("a rule needs at least one point")
    values = rule.value[:point_index] + rule.value[point_index + 1:]
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=values))


def fallback_index(rules: tuple[FilterRule, ...]) -> int | None:
    """Index of the first rule matching every tensor, if any."""
    return next((i for i, r in enumerate(rules) if r.filter in (None, "*")), None)


def add_rule(stage: Stage, loc: ParamLocation, name: str, filter_: str | None,
             value: Scalar | Gradient | None = None, index: int | None = None) -> Stage:
    """Add a ``{filter, value}`` rule, by default just before the fallback (or last).

    Without ``value`` the rule copies the fallback's value (0.5 when there is none).
    """
    rules = list(get_rules(stage, loc, name))
    fallback = fallback_index(tuple(rules))
    if value is None:
        value = rules[fallback].value if fallback is not None else 0.5
    if index is None:
        index = fallback if fallback is not None and filter_ not in (None, "*") else len(rules)
    rules.insert(index, FilterRule(value, filter_))
    # More than one rule must be a list, even where the value was bare.
    if len(rules) > 1:
        return set_parameter(stage, loc, name, tuple(rules))
    return _set_rules(stage, loc, name, tuple(rules))


def remove_rule(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Remove a rule; removing the only rule removes the parameter at ``loc``."""
    rules = list(get_rules(stage, loc, name))
    del rules[rule_index]
    return _set_rules(stage, loc, name, tuple(rules))


def move_rule(stage: Stage, loc: ParamLocation, name: str, from_index: int, to_index: int) -> Stage:
    """Move a rule to ``to_index`` (order matters: the first matching rule wins)."""
    rules = list(get_rules(stage, loc, name))
    rule = rules.pop(from_index)
    rules.insert(max(0, min(len(rules), to_index)), rule)
    return _set_rules(stage, loc, name, tuple(rules))


def rename_rule(stage: Stage, loc: ParamLocation, name: str, rule_index: int, filter_: str | None) -> Stage:
    """Change a rule's filter; an empty filter makes it a fallback."""
    rules = get_rules(stage, loc, name)
    rule = replace(rules[rule_index], filter=filter_ or None)
    if len(rules) == 1 and rule.filter is not None:
        return set_parameter(stage, loc, name, (rule,))  # a filter needs the list form
    return _replace_rule(stage, loc, name, rule_index, rule)


def apply_preset(stage: Stage, loc: ParamLocation, name: str, rule_index: int, preset: str,
                 low: float = 0.0, high: float = 1.0, slices: Sequence[Sequence[float]] = ()) -> Stage:
    """Replace rule ``rule_index``'s value by a preset shape from ``low`` to ``high`` (clamped
    to the edit bounds), the shortest gradient exact at the layer positions ``slices``
    (see :func:`~merger_gui.core.gradient_fit.preset_gradient`)."""
    bounds = value_bounds(stage.merge_method, name)
    value = preset_gradient(preset, clamp(low, bounds), clamp(high, bounds), slices)
    return set_rule_value(stage, loc, name, rule_index, value)


def set_rule_value(stage: Stage, loc: ParamLocation, name: str, rule_index: int, value: Scalar | Gradient) -> Stage:
    """Replace rule ``rule_index``'s value (its filter kept)."""
    rule = get_rules(stage, loc, name)[rule_index]
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=value))


def insert_point(stage: Stage, loc: ParamLocation, name: str, rule_index: int, x: float, value: float) -> Stage:
    """Give rule ``rule_index`` one more evenly spaced point, its curve passing through
    ``(x, value)`` (``x`` the position in the slice) and keeping its shape elsewhere."""
    rule = get_rules(stage, loc, name)[rule_index]
    bounds = drag_bounds(stage, loc, name)
    new = insert_anchor(points(rule.value), min(1.0, max(0.0, x)), clamp(value, bounds), bounds)
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=new))


def invert_rule(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Reflect rule ``rule_index``'s values within the parameter's edit range (``t`` → 1 − t)."""
    rule = get_rules(stage, loc, name)[rule_index]
    values = invert(points(rule.value), value_bounds(stage.merge_method, name))
    return set_rule_value(stage, loc, name, rule_index, values if isinstance(rule.value, tuple) else values[0])


def mirror_rule(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Reverse rule ``rule_index``'s curve over the slice (a scalar stays as is)."""
    rule = get_rules(stage, loc, name)[rule_index]
    if not isinstance(rule.value, tuple):
        return stage
    return set_rule_value(stage, loc, name, rule_index, mirror(points(rule.value)))


def copy_rule_value(stage: Stage, loc: ParamLocation, name: str, from_rule: int, to_rule: int) -> Stage:
    """Give rule ``to_rule`` the value (scalar or gradient) of rule ``from_rule``."""
    return set_rule_value(stage, loc, name, to_rule, get_rules(stage, loc, name)[from_rule].value)


def to_gradient(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Turn a scalar rule into a flat two-point gradient (a gradient, or a value that is no number, is left as is)."""
    rule = get_rules(stage, loc, name)[rule_index]
    if not isinstance(rule.value, (int, float)):
        return stage
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=(rule.value, rule.value)))


def to_scalar(stage: Stage, loc: ParamLocation, name: str, rule_index: int) -> Stage:
    """Turn a gradient rule into a scalar: the mean of its curve (a scalar is left as is)."""
    rule = get_rules(stage, loc, name)[rule_index]
    if not isinstance(rule.value, tuple):
        return stage
    values = points(rule.value)
    samples = [float(interpolate_gradient(values, i / 64)) for i in range(65)]
    mean = math.fsum(samples) / len(samples)
    return _replace_rule(stage, loc, name, rule_index, replace(rule, value=round(mean, DECIMALS)))
