"""Resolve a recipe parameter for one tensor exactly as mergekit does, and say where it came from.

This is the single place that knows the rules; the plan (hence the engine), validation, the
designer's curves and ``merger-gui plan`` all call :func:`resolve_parameter` on the chain
:func:`scope_chain` builds.

Rules (mergekit's ``evaluate_setting`` and ``resolve_parameter``): a filter is a substring
test; the first matching rule of a list wins; scopes are tried from the most specific (the
model's source) through the slice to the stage, and a scope whose rules match nothing falls
through; a gradient is read piecewise-linearly at the tensor's position ``x`` in its slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .recipe import FilterRule, Gradient, Parameters, ParamValue, Scalar, Stage

ScopeKind = Literal["source", "slice", "module", "stage"]
_MISSING = object()


@dataclass(frozen=True)
class Scope:
    """One ``parameters`` mapping of a stage and where it sits: ``slice_index`` into the
    recipe's ``slices:``, ``source_index`` into that slice's sources or into ``models:``."""

    kind: ScopeKind
    parameters: Parameters
    slice_index: int | None = None
    source_index: int | None = None

    @property
    def label(self) -> str:
        """Where the scope is, in words: ``stage``, ``slice 2``, ``slice 2 source 1``, ``model 3``."""
        parts = []
        if self.slice_index is not None:
            parts.append(f"slice {self.slice_index + 1}")
        if self.source_index is not None:
            parts.append(f"source {self.source_index + 1}" if self.slice_index is not None
                         else f"model {self.source_index + 1}")
        return " ".join(parts) or ("module" if self.kind == "module" else "stage")


@dataclass(frozen=True)
class Resolution:
    """The value a tensor gets for one parameter and its provenance: the scope and the index
    and filter of the rule that gave it (``rule`` None: a bare value; ``scope`` None: the
    method's default, or no value at all)."""

    value: Scalar | None
    scope: Scope | None = None
    rule: int | None = None
    filter: str | None = None
    setting: Scalar | Gradient | None = None  # what the recipe writes (a gradient unread)

    @property
    def is_default(self) -> bool:
        return self.scope is None

    @property
    def describe(self) -> str:
        """Where the value comes from, for hover texts: ``slice 1, rule 2 (mlp)``, ``default``."""
        if self.scope is None:
            return "default" if self.value is not None else "not set"
        if self.rule is None:
            return self.scope.label
        rule = "fallback" if self.filter in (None, "*") else repr(self.filter)
        return f"{self.scope.label}, rule {self.rule + 1} ({rule})"


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


def as_rule_list(spec: ParamValue | None) -> tuple[FilterRule, ...]:
    """The rules of a rule list; empty for a scalar, a gradient or nothing."""
    if isinstance(spec, tuple) and spec and isinstance(spec[0], FilterRule):
        return spec
    return ()


def winning_rule(rules: Sequence[FilterRule], tensor_name: str) -> int | None:
    """Index of the first rule matching ``tensor_name`` (the one mergekit applies), if any."""
    return next((i for i, rule in enumerate(rules) if rule.matches(tensor_name)), None)


def _match(spec: ParamValue, tensor_name: str) -> tuple[int | None, Scalar | Gradient | None]:
    """The index of the rule that gives ``tensor_name`` a value (None: a bare value) and the raw value."""
    rules = as_rule_list(spec)
    if rules:
        index = winning_rule(rules, tensor_name)
        return (None, None) if index is None else (index, _match(rules[index].value, tensor_name)[1])
    if spec == ():
        return None, None  # an empty list gives nothing and falls through
    return None, spec  # type: ignore[return-value]  # scalar or gradient


def matching_value(spec: ParamValue, tensor_name: str) -> Scalar | Gradient | None:
    """The raw value ``spec`` gives ``tensor_name`` (None when no rule matches)."""
    return _match(spec, tensor_name)[1]


def resolve_parameter(name: str, tensor_name: str, x: float, scopes: Sequence[Scope],
                      default: Scalar | None = None) -> Resolution:
    """Value of parameter ``name`` for ``tensor_name`` at slice position ``x``, with its provenance.

    Args:
        name: Parameter name (``t``, ``weight``, ``density``…).
        tensor_name: The tensor the value is for (output name for shared parameters,
            the model's input name for per-model ones).
        x: Position in the slice, from :func:`slice_position`; 0 for non-layer tensors.
        scopes: The chain from :func:`scope_chain`, most specific first.
        default: The method's default when no scope gives a value.
    """
    for scope in scopes:
        spec = scope.parameters.get(name, _MISSING)
        if spec is _MISSING:
            continue
        rule, value = _match(spec, tensor_name)  # type: ignore[arg-type]
        if value is not None:
            rules = as_rule_list(spec)  # type: ignore[arg-type]
            return Resolution(resolve_value(value, x), scope, rule,
                              rules[rule].filter if rule is not None else None, value)
    return Resolution(default)


def evaluate_parameter(name: str, tensor_name: str, x: float, scopes: Sequence[Mapping[str, ParamValue]],
                       default: Scalar | None = None) -> Scalar | None:
    """Just the value of :func:`resolve_parameter`, over bare ``parameters`` mappings, most specific first."""
    chain = tuple(Scope("stage", p if isinstance(p, Parameters) else Parameters(p)) for p in scopes)
    return resolve_parameter(name, tensor_name, x, chain, default).value


def planned_slice_indices(stage: Stage) -> tuple[int | None, ...]:
    """For each slice the plan numbers, its index in the recipe's ``slices:`` (the plan skips
    slices without sources); a ``models:`` stage is one slice that has no index."""
    if stage.slices is None:
        return (None,)
    return tuple(i for i, s in enumerate(stage.slices) if s.sources)


def scope_chain(stage: Stage, slice_index: int | None, model: str | None = None) -> tuple[Scope, ...]:
    """The scopes a value is looked up in, most specific first, as mergekit orders them.

    Args:
        stage: The stage.
        slice_index: Index into the recipe's ``slices:``; None for a ``models:`` stage (or
            the stage's own parameters alone).
        model: For per-model parameters, the model whose sources (or ``models:`` entries) come
            first; None for shared parameters.
    """
    chain: list[Scope] = []
    if slice_index is not None and stage.slices is not None:
        slice_ = stage.slices[slice_index]
        if model is not None:
            chain += [Scope("source", s.parameters, slice_index, k) for k, s in enumerate(slice_.sources)
                      if s.model == model]
        chain.append(Scope("slice", slice_.parameters, slice_index))
    elif model is not None:
        chain += [Scope("source", e.parameters, None, k) for k, e in enumerate(stage.models or ())
                  if e.model == model]
    if stage.module is not None:  # the ``modules:`` form: the module's parameters, then the stage's
        chain.append(Scope("module", stage.module.parameters))
    chain.append(Scope("stage", stage.parameters))
    return tuple(chain)
