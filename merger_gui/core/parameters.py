"""Evaluate a recipe parameter for one tensor exactly as mergekit does.

This is the single place that knows the rules; the engine and the GUI's t-curves
both call :func:`evaluate_parameter`.

Rules (see docs/mergekit-compat): a filter is a substring test; the first matching
rule wins; scopes are tried from the most specific (source) to the least (top level)
and a scope whose rules match nothing falls through; a gradient is read
piecewise-linearly at the tensor's position ``x`` in its slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .recipe import FilterRule, Gradient, Parameters, ParamValue, Scalar

_MISSING = object()


def slice_position(position: int, slice_length: int) -> float:
    """Position ``x`` in [0, 1] of the ``position``-th layer of a slice of ``slice_length`` layers."""
    if slice_length <= 1:
        return 1.0
    return position / (slice_length - 1)


def interpolate_gradient(values: Sequence[Scalar], x: float) -> Scalar:
    """Read a gradient list piecewise-linearly at ``x`` in [0, 1].

    Lists of booleans or strings select a value instead of interpolating.
    """
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(x * (len(values) - 1))]
    if len(values) == 1:
        return float(values[0])
    p = x * (len(values) - 1)
    lower = min(int(math.floor(p)), len(values) - 1)
    upper = min(len(values) - 1, lower + 1)
    frac = p - lower
    return (1 - frac) * float(values[lower]) + frac * float(values[upper])


def resolve_value(value: Scalar | Gradient, x: float) -> Scalar:
    """A scalar as is; a gradient read at ``x``."""
    if isinstance(value, tuple):
        return interpolate_gradient(value, x)
    return value


def matching_value(spec: ParamValue, tensor_name: str) -> Scalar | Gradient | None:
    """The raw value ``spec`` gives ``tensor_name`` (None when no rule matches)."""
    if isinstance(spec, tuple) and spec and isinstance(spec[0], FilterRule):
        for rule in spec:
            if rule.matches(tensor_name):
                return matching_value(rule.value, tensor_name)
        return None
    if spec == ():
        return None  # an empty list gives nothing and falls through
    return spec  # scalar or gradient


def evaluate_parameter(
    name: str,
    tensor_name: str,
    x: float,
    scopes: Sequence[Parameters],
    default: Scalar | None = None,
) -> Scalar | None:
    """Value of parameter ``name`` for ``tensor_name`` at slice position ``x``.

    Args:
        name: Parameter name (``t``, ``weight``, ``density``…).
        tensor_name: The tensor the value is for (output name for shared parameters,
            the model's input name for per-model ones).
        x: Position in the slice, from :func:`slice_position`; 0 for non-layer tensors.
        scopes: Parameter scopes, most specific first.
        default: The method's default when no scope gives a value.
    """
    for scope in scopes:
        spec = scope.get(name, _MISSING)
        if spec is _MISSING:
            continue
        value = matching_value(spec, tensor_name)
        if value is not None:
            return resolve_value(value, x)
    return default


def rule_filters(spec: ParamValue) -> tuple[str | None, ...]:
    """The filters of a rule list (empty for a scalar or gradient)."""
    if isinstance(spec, tuple) and spec and isinstance(spec[0], FilterRule):
        return tuple(rule.filter for rule in spec)
    return ()
