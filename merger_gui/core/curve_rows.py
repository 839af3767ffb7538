"""The per-layer grid as pure functions: per rule of a curve parameter, the value the merge
applies at each output layer and whether that rule's own value gives it there; editing a row
writes the shortest gradient that reproduces it (:func:`~merger_gui.core.gradient_fit.fit_samples`).

Values come from :func:`~merger_gui.core.curves.curve_series`, so a cell shows what the plan
(and the engine) applies: gradients restart per slice and more specific scopes win.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import parameter_edits as edits
from .curves import CurveTarget, NamesByLayer, curve_series, curve_targets, tensor_names
from .errors import UserError
from .gradient_fit import FREE_STEP, fit_samples, snap
from .methods import UNBOUNDED, parameter_facts
from .parameters import Resolution
from .plan import OutputLayer, StagePlan
from .recipe import FilterRule, Stage


class RowError(UserError):
    """A row of values the recipe cannot give (another scope's value, out of range, or no
    gradient list reproduces it)."""


@dataclass(frozen=True)
class RowCell:
    """One rule at one output layer: the value applied (nan: the rule gives none there), whether
    editing the rule changes it, and where the value comes from."""

    layer: int
    slice_index: int  # the plan's slice numbering
    value: float
    editable: bool
    source: str = ""


@dataclass(frozen=True)
class RuleRow:
    """One rule's cells and, where some cannot be edited, why (empty when all can)."""

    cells: tuple[RowCell, ...]
    note: str = ""

    @property
    def values(self) -> list[float]:
        return [c.value for c in self.cells]


@dataclass(frozen=True)
class LayerValue:
    """What one rule of one curve parameter gives at an output layer (for hover texts)."""

    parameter: str
    rule: str
    value: float
    tensor: str


def rule_name(rule: FilterRule) -> str:
    return "fallback" if rule.filter in (None, "*") else rule.filter


def owns(resolution: Resolution | None, target: CurveTarget, rule: int) -> bool:
    """Whether ``resolution`` comes from rule ``rule`` at ``target``'s own location."""
    scope = resolution.scope if resolution else None
    if scope is None or (resolution.rule or 0) != rule:  # type: ignore[union-attr]
        return False
    loc = target.location
    if loc.model_index is not None:
        return scope.kind == "source" and scope.slice_index is None and scope.source_index == loc.model_index
    if loc.slice_index is None:
        return scope.kind == "stage"
    kind = "slice" if loc.source_index is None else "source"
    return scope.kind == kind and scope.slice_index == loc.slice_index and scope.source_index == loc.source_index


def _ranges(layers: Sequence[int]) -> str:
    """``0-3, 8`` for layers 0, 1, 2, 3, 8."""
    parts: list[list[int]] = []
    for layer in layers:
        if parts and layer == parts[-1][-1] + 1:
            parts[-1].append(layer)
        else:
            parts.append([layer])
    return ", ".join(f"{p[0]}-{p[-1]}" if len(p) > 1 else str(p[0]) for p in parts)


def _note(cells: list[RowCell], name: str) -> str:
    if all(math.isnan(c.value) for c in cells):
        return "no layer tensor takes this rule (only embeddings, norm or lm_head, if any)"
    foreign = [c for c in cells if not c.editable and not math.isnan(c.value)]
    if not foreign:
        return ""
    return f"layers {_ranges([c.layer for c in foreign])} take {name} from {foreign[0].source}: edit it there"


def rule_rows(stage: Stage, target: CurveTarget, rules: tuple[FilterRule, ...], layers: tuple[OutputLayer, ...],
              names: NamesByLayer) -> tuple[RuleRow, ...]:
    """Per rule of ``target``, one cell per output layer of ``layers``."""
    rows = []
    for r, series in enumerate(curve_series(stage, target, rules, layers, names)):
        cells = [RowCell(layer.index, layer.slice_index, point.value, owns(point.resolution, target, r),
                         point.resolution.describe if point.resolution else "")
                 for layer, point in zip(layers, series.points)]
        rows.append(RuleRow(tuple(cells), _note(cells, target.name)))
    return tuple(rows)


def set_rule_row(stage: Stage, target: CurveTarget, layers: tuple[OutputLayer, ...], names: NamesByLayer,
                 rule_index: int, values: Sequence[float | None], step: float = FREE_STEP) -> Stage:
    """Give rule ``rule_index`` the per-layer ``values`` (None or nan: keep the cell), written
    as the shortest gradient that reproduces every cell the rule gives, within ``step``.

    Raises:
        RowError: a changed cell takes its value from elsewhere or from no tensor, a value is
            outside the parameter's valid range, or no gradient gives the row (one gradient
            serving several slices that are given different rows).
    """
    rules = edits.get_rules(stage, target.location, target.name)
    row = rule_rows(stage, target, rules, layers, names)[rule_index]
    facts = parameter_facts(stage.merge_method, target.name)
    low, high = facts.valid if facts else UNBOUNDED
    samples, changed = [], False
    for cell, layer, new in zip(row.cells, layers, values):
        given = new is not None and not math.isnan(new)
        if given and (math.isnan(cell.value) or snap(new, step) != snap(cell.value, step)):  # type: ignore[arg-type]
            if not cell.editable:
                where = f"from {cell.source}" if cell.source else "from no tensor of this rule"
                raise RowError(f"layer {cell.layer} takes {target.name} {where}: edit it there")
            changed = True
        if not cell.editable:
            continue
        value = snap(new if given else cell.value, step)  # type: ignore[arg-type]
        if not low <= value <= high:
            raise RowError(f"{target.name} {value:g} at layer {cell.layer} is outside its valid range "
                           f"[{low:g}, {high:g}]")
        samples.append((layer.x, value))
    if not changed:
        return stage
    fitted = fit_samples(samples, step, (low, high))
    if fitted is None:
        slices = sorted({c.slice_index + 1 for c in row.cells if c.editable})
        raise RowError(f"cannot be represented per layer: slices {_ranges(slices)} share one {target.name} "
                       "gradient list and none gives all of them these values; set it per slice instead")
    return edits.set_rule_value(stage, target.location, target.name, rule_index, fitted)


def values_at_layer(stage: Stage, plan: StagePlan, layer: int) -> tuple[LayerValue, ...]:
    """Every curve parameter rule's value at output ``layer`` of ``plan``, only where that
    rule is the one in effect (for the designer's hover texts)."""
    out: list[LayerValue] = []
    for target in curve_targets(stage):
        rules = edits.get_rules(stage, target.location, target.name)
        if not rules:
            continue
        names = tensor_names(plan, target.model)
        for r, series in enumerate(curve_series(stage, target, rules, (plan.layers[layer],), names)):
            point = series.points[0]
            if owns(point.resolution, target, r):
                out.append(LayerValue(target.label, rule_name(rules[r]), point.value, point.tensor or ""))
    return tuple(out)
