"""``merger-gui plan``: the output layers of every stage, where they come from and with what values."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.core.parameters import (
    Resolution,
    Scope,
    as_rule_list,
    planned_slice_indices,
    resolve_parameter,
    scope_chain,
)
from merger_gui.core.plan import OutputLayer, PlannedTensor, StagePlan, filtered_name, plan_recipe
from merger_gui.core.recipe import Recipe, Scalar, Stage

from .common import (
    add_donor_argument, add_json_argument, add_recipe_argument, checked_recipe, load_recipe_file, print_json,
    report_errors,
)
from .moe_commands import moe_recipe_file, run_plan

ParameterGroups = dict[str, dict[str, Scalar]]  # parameter → filter group → value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show the output layers, their sources and parameter values, seams and donor usage",
        description="Plan every stage of a recipe (in dependency order) without reading any weights.",
    )
    add_recipe_argument(parser)
    add_donor_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    moe = moe_recipe_file(args.recipe)
    if moe is not None:
        return run_plan(moe, args)
    recipe = load_recipe_file(args.recipe)
    donors, findings = checked_recipe(recipe, args.recipe, args.donor)
    errors = report_errors(findings)
    try:
        _print_plan(recipe, donors, args.json)  # with errors, what could be planned
    except UserError:
        if not errors:
            raise  # otherwise the errors above say why
    return 1 if errors else 0


def _print_plan(recipe: Recipe, donors: Mapping[str, DonorInfo], as_json: bool) -> None:
    plan = plan_recipe(recipe, donors)
    views = [StageView(recipe.stages[s.index], s) for s in plan.stages]
    if as_json:
        print_json({"stages": [view.to_json() for view in views]})
    else:
        print("\n\n".join(view.render() for view in views))


def format_ranges(indices: Sequence[int]) -> str:
    """Compact runs of sorted integers: ``0–7, 24–31``; ``none`` when empty."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(_span(a, b) for a, b in runs) or "none"


def rule_group(found: Resolution) -> str:
    """Label of a resolved value: the filter of the rule that gave it, else ``other`` (a fallback
    rule, a plain value or the method's default)."""
    named = found.rule is not None and found.filter not in (None, "*")
    return found.filter if named else "other"  # type: ignore[return-value]


class StageView:
    """One planned stage, summarised per output layer for printing."""

    def __init__(self, stage: Stage, plan: StagePlan) -> None:
        self.stage = stage
        self.plan = plan
        by_layer: dict[int, list[PlannedTensor]] = {}
        for tensor in plan.tensors:
            if tensor.layer is not None:
                by_layer.setdefault(tensor.layer, []).append(tensor)
        self.layer_parameters = {
            layer.index: self._parameter_groups(layer, by_layer.get(layer.index, [])) for layer in plan.layers
        }

    def _parameter_groups(self, layer: OutputLayer, tensors: list[PlannedTensor]) -> ParameterGroups:
        """Values of ``layer``'s tensors by parameter and by the filter (or source model) that gave them."""
        recipe_slice = planned_slice_indices(self.stage)[layer.slice_index]
        chain = scope_chain(self.stage, recipe_slice)
        groups: ParameterGroups = {}
        for tensor in tensors:
            for name, value in tensor.parameters.items():
                found = resolve_parameter(name, tensor.name, tensor.x, chain)
                groups.setdefault(name, {})[rule_group(found)] = value  # type: ignore[assignment]
            for source in tensor.sources:
                source_chain = scope_chain(self.stage, recipe_slice, source.model)
                for name, value in source.parameters.items():
                    found = resolve_parameter(name, filtered_name(tensor.name, source.tensor), tensor.x, source_chain)
                    group = rule_group(found)
                    label = source.model if group == "other" else f"{source.model} {group}"
                    groups.setdefault(name, {})[label] = value  # type: ignore[assignment]
        return {name: _in_rule_order(by_group, chain, name) for name, by_group in groups.items()}

    def to_json(self) -> dict[str, Any]:
        """``--json`` output of the stage: layers with sources and values, seams, donor usage, notes."""
        plan = self.plan
        return {
            "index": plan.index,
            "name": plan.name,
            "merge_method": plan.merge_method,
            "num_layers": plan.num_layers,
            "params": plan.params,
            "config_donor": plan.config_donor,
            "vocab_size": plan.vocab_size,
            "layers": [
                {"index": layer.index, "slice": layer.slice_index,
                 "sources": [{"model": s.model, "layer": s.layer} for s in layer.sources],
                 "parameters": self.layer_parameters[layer.index]}
                for layer in plan.layers
            ],
            "seams": [
                {"layer": seam,
                 "before": [{"model": s.model, "layer": s.layer} for s in plan.layers[seam - 1].sources],
                 "after": [{"model": s.model, "layer": s.layer} for s in plan.layers[seam].sources]}
                for seam in plan.seams
            ],
            "donor_usage": [
                {"model": u.model, "num_layers": u.num_layers, "used_once": list(u.used_once),
                 "repeated": list(u.repeated), "skipped": list(u.skipped)}
                for u in plan.donor_usage
            ],
            "notes": [{"tensor": t.name, "note": t.note} for t in plan.tensors if t.note],
        }

    def render(self) -> str:
        """The stage as text: heading, runs of layers, seams, donor usage and notes."""
        plan = self.plan
        lines = [
            f"Stage {_stage_title(plan)}: {plan.merge_method}, {plan.num_layers} layers, {plan.params:,} parameters",
            f"  config.json and tokenizer from {plan.config_donor}; vocabulary {plan.vocab_size:,}",
            "  layers:",
        ]
        lines += [f"    {line}" for line in self.layer_lines()]
        seams = ", ".join(
            f"{seam} ({_sources(plan.layers[seam - 1])} → {_sources(plan.layers[seam])})" for seam in plan.seams)
        lines.append(f"  seams: {seams or 'none'}")
        lines.append("  donor usage:")
        for u in plan.donor_usage:
            lines.append(f"    {u.model} ({u.num_layers} layers): used once {format_ranges(u.used_once)}; "
                         f"repeated {format_ranges(u.repeated)}; skipped {format_ranges(u.skipped)}")
        lines += [f"  note: {t.name}: {t.note}" for t in plan.tensors if t.note]
        return "\n".join(lines)

    def layer_lines(self) -> list[str]:
        """One line per run of layers that continue the same sources with the same values."""
        runs: list[list[OutputLayer]] = []
        for layer in self.plan.layers:
            prev = runs[-1][-1] if runs else None
            if prev is not None and _continues(prev, layer) \
                    and _values(self.layer_parameters[prev.index]) == _values(self.layer_parameters[layer.index]):
                runs[-1].append(layer)
            else:
                runs.append([layer])
        width = len(str(self.plan.num_layers - 1)) * 2 + 1
        lines = []
        for run in runs:
            first, last = run[0], run[-1]
            sources = " + ".join(f"{a.model} {_span(a.layer, b.layer)}" for a, b in zip(first.sources, last.sources))
            values = _values(self.layer_parameters[first.index])
            lines.append(f"{_span(first.index, last.index):>{width}}  {sources}" + (f"   {values}" if values else ""))
        return lines


def _in_rule_order(by_group: dict[str, Scalar], chain: Sequence[Scope], name: str) -> dict[str, Scalar]:
    """Groups in the order their rules are written, ``other`` last."""
    filters = [r.filter for scope in chain for r in as_rule_list(scope.parameters.get(name))]
    rank = {f: i for i, f in reversed(list(enumerate(filters)))}
    return dict(sorted(by_group.items(), key=lambda item: rank.get(item[0], len(filters) + (item[0] == "other"))))


def _stage_title(plan: StagePlan) -> str:
    return repr(plan.name) if plan.name else str(plan.index + 1)


def _continues(prev: OutputLayer, layer: OutputLayer) -> bool:
    """``layer`` takes the next layer of the same models as ``prev``, in the same slice."""
    return prev.slice_index == layer.slice_index and all(
        a.model == b.model and a.layer + 1 == b.layer for a, b in zip(prev.sources, layer.sources))


def _span(first: int, last: int) -> str:
    return f"{first}–{last}" if last > first else str(first)


def _sources(layer: OutputLayer) -> str:
    return " + ".join(f"{s.model} {s.layer}" for s in layer.sources)


def _values(groups: ParameterGroups) -> str:
    """``t: self_attn 0.75, mlp 0.25, other 0.5``; a single group shows its value alone."""
    parts = []
    for name, by_group in groups.items():
        if len(set(by_group.values())) == 1 and len(by_group) == 1:
            parts.append(f"{name}: {_number(next(iter(by_group.values())))}")
        else:
            parts.append(f"{name}: " + ", ".join(f"{g} {_number(v)}" for g, v in by_group.items()))
    return "; ".join(parts)


def _number(value: Scalar) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
