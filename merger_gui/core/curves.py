"""The designer's parameter curves, as pure functions: which parameters are curves, where they
can be edited, and the curve series of a stage (per rule, the value at each output layer).

The series use the plan's output layers and slice numbering and resolve every value with
:func:`~merger_gui.core.parameters.resolve_parameter`, so a curve shows exactly what the merge
applies: it restarts in every slice, more specific scopes win, and non-layer tensors take the
value at the start of their slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .donor import MAX_LAYERS
from .methods import ParameterSpec, method_spec, parameter_default
from .parameter_edits import TOP_LEVEL, ParamLocation, fallback_index, get_rules
from .parameters import Resolution, planned_slice_indices, resolve_parameter, scope_chain, winning_rule
from .plan import OutputLayer, StagePlan, filtered_name
from .recipe import FilterRule, Stage

# Output layer (None: non-layer tensors) → the tensors a parameter applies to there: the name its
# filters see and the plan's slice of the tensor.
NamesByLayer = dict[int | None, list[tuple[str, int]]]


@dataclass(frozen=True)
class CurveTarget:
    """One editable parameter: its name, where it lives and, for per-model ones, the model."""

    label: str
    name: str
    location: ParamLocation
    model: str | None = None


@dataclass(frozen=True)
class CurvePoint:
    """What one rule gives at one output layer (``layer`` None: the non-layer tensors): the
    value ``tensor`` gets and where it comes from; ``tensor`` None where no tensor takes the rule."""

    layer: int | None
    tensor: str | None = None
    resolution: Resolution | None = None

    @property
    def value(self) -> float:
        """The numeric value, nan where there is none."""
        value = self.resolution.value if self.resolution else None
        return float(value) if isinstance(value, (int, float)) else math.nan


@dataclass(frozen=True)
class RuleSeries:
    """One rule's curve: a point per output layer, and the non-layer tensors' point (if any takes it)."""

    points: tuple[CurvePoint, ...]
    non_layer: CurvePoint | None

    @property
    def layers(self) -> list[int]:
        return [p.layer for p in self.points if p.layer is not None]

    @property
    def values(self) -> list[float]:
        return [p.value for p in self.points]


def setting_specs(stage: Stage) -> tuple[ParameterSpec, ...]:
    """The shared parameters of the stage's method that are settings, not curves."""
    spec = method_spec(stage.merge_method)
    return spec.settings if spec else ()


def curve_targets(stage: Stage) -> tuple[CurveTarget, ...]:
    """Every curve parameter of ``stage`` the editor offers, top-level shared ones first."""
    spec = method_spec(stage.merge_method)
    if spec is None:
        return ()
    targets: list[CurveTarget] = []
    slices = stage.slices or ()
    for p in spec.shared_parameters:
        if not p.curve:
            continue
        targets.append(CurveTarget(f"{p.name} (all slices)" if len(slices) > 1 else p.name, p.name, TOP_LEVEL))
        targets += [CurveTarget(f"{p.name} (slice {i + 1})", p.name, ParamLocation(i))
                    for i, s in enumerate(slices) if p.name in s.parameters]
    for p in spec.model_parameters:
        if not p.curve:
            continue
        if stage.models is not None:
            targets += [CurveTarget(f"{p.name} · {e.model}", p.name, ParamLocation(model_index=k), e.model)
                        for k, e in enumerate(stage.models) if not (p.non_base and e.model == stage.base_model)]
        for i, slice_ in enumerate(slices):
            base = slice_.base_model or stage.base_model
            suffix = f" (slice {i + 1})" if len(slices) > 1 else ""
            targets += [CurveTarget(f"{p.name} · {s.model}{suffix}", p.name, ParamLocation(i, j), s.model)
                        for j, s in enumerate(slice_.sources) if not (p.non_base and s.model == base)]
    return tuple(targets)


def layers_from_ranges(stage: Stage) -> tuple[OutputLayer, ...]:
    """The output layers a ``slices:`` stage gives by its layer ranges alone, numbered as the
    plan numbers them (a slice is as long as its shortest source); empty for ``models:``."""
    layers: list[OutputLayer] = []
    slices = [s for s in stage.slices or () if s.sources]
    for k, slice_ in enumerate(slices):
        # At most MAX_LAYERS: a range like [0, 1000000000] must not build a billion layers.
        length, first = min(MAX_LAYERS, max(0, min(s.num_layers for s in slice_.sources))), len(layers)
        layers += [OutputLayer(first + p, k, p, length, ()) for p in range(length)]
    return tuple(layers)


def tensor_names(stage_plan: StagePlan, model: str | None) -> NamesByLayer:
    """Names of the tensors a parameter applies to, by output layer: the output tensors for a
    shared parameter, ``model``'s input tensors for a per-model one."""
    by_layer: NamesByLayer = {}
    for tensor in stage_plan.tensors:
        names = [tensor.name] if model is None else \
            [filtered_name(tensor.name, s.tensor) for s in tensor.sources if s.model == model]
        by_layer.setdefault(tensor.layer, []).extend((n, tensor.slice_index) for n in names)
    return by_layer


def curve_layout(stage: Stage, stage_plan: StagePlan | None, target: CurveTarget,
                 rules: tuple[FilterRule, ...]) -> tuple[tuple[OutputLayer, ...], NamesByLayer, bool] | None:
    """The output layers a curve runs over, the tensor names per layer, and whether they come
    from a full plan; without one, the layer ranges and one name per rule that the rule itself
    matches (so each curve shows what its rule gives). None when there are no layers at all."""
    if stage_plan is not None and stage_plan.layers:
        return stage_plan.layers, tensor_names(stage_plan, target.model), True
    layers = layers_from_ranges(stage)
    if not layers:
        return None
    return layers, {layer.index: [(rule.filter or "", layer.slice_index) for rule in rules] for layer in layers}, False


def curve_series(stage: Stage, target: CurveTarget, rules: tuple[FilterRule, ...],
                 layers: tuple[OutputLayer, ...], names: NamesByLayer) -> tuple[RuleSeries, ...]:
    """Per rule of ``target``: at each output layer the value the merge gives the first tensor
    that rule wins (resolved through every scope, so an override elsewhere shows), and the
    value of the first non-layer tensor it wins."""
    recipe_slices = planned_slice_indices(stage)
    default = parameter_default(stage.merge_method, target.name)

    def point(layer: int | None, x: float, rule: int) -> CurvePoint:
        found = next(((n, k) for n, k in names.get(layer, []) if winning_rule(rules, n) == rule), None)
        if found is None or found[1] >= len(recipe_slices):
            return CurvePoint(layer)
        chain = scope_chain(stage, recipe_slices[found[1]], target.model)
        return CurvePoint(layer, found[0], resolve_parameter(target.name, found[0], x, chain, default))

    series = []
    for r in range(len(rules)):
        points = tuple(point(layer.index, layer.x, r) for layer in layers)
        non_layer = point(None, 0.0, r)  # the plan reads non-layer tensors at x = 0
        series.append(RuleSeries(points, non_layer if non_layer.tensor is not None else None))
    return tuple(series)


def stage_curve_series(stage: Stage, stage_plan: StagePlan, target: CurveTarget) -> tuple[RuleSeries, ...]:
    """The curve series of ``target`` over a planned stage (what the designer draws)."""
    rules = get_rules(stage, target.location, target.name)
    return curve_series(stage, target, rules, stage_plan.layers, tensor_names(stage_plan, target.model))


def applied_slices(stage: Stage, layers: tuple[OutputLayer, ...], target: CurveTarget) -> list[tuple[int, int]]:
    """(first output layer, length) of each slice where the edited location is the one in effect."""
    recipe_slices = planned_slice_indices(stage)
    loc = target.location
    result = []
    for layer in layers:
        if layer.position != 0 or layer.slice_index >= len(recipe_slices):
            continue
        raw = recipe_slices[layer.slice_index]
        if loc.slice_index is not None and raw != loc.slice_index:
            continue
        if loc.is_top_level and raw is not None and target.name in stage.slices[raw].parameters:  # type: ignore[index]
            continue
        result.append((layer.index, layer.slice_length))
    return result


def rule_warnings(rules: tuple[FilterRule, ...], names: NamesByLayer | None) -> dict[int, str]:
    """Why a rule never applies: shadowed by an earlier fallback, or (given the tensor names)
    matching no tensor, or losing every tensor it matches to an earlier rule."""
    fallback = fallback_index(rules)
    warnings = {r: "shadowed: the fallback rule above it matches every tensor first"
                for r in range(fallback + 1, len(rules))} if fallback is not None else {}
    all_names = [n for layer_names in (names or {}).values() for n, _ in layer_names]
    for r, rule in enumerate(rules):
        if names is None or r in warnings:
            continue
        if not any(rule.matches(n) for n in all_names):
            warnings[r] = f"“{rule.filter}” matches no tensor of the donors: it is never used"
        elif not any(winning_rule(rules, n) == r for n in all_names):
            warnings[r] = "every tensor it matches is taken by an earlier rule"
    return warnings
