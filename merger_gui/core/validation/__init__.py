"""Check a recipe before merging: everything mergekit gets silently wrong, and plain mistakes.

:func:`validate_recipe` is a pure function of the recipe and what is known of its donors. It
never raises on a bad recipe: every problem becomes a :class:`Finding` with a stable ``code``
(kebab-case), a one-line message that says how to fix it, and where it is. Checks that need
donor facts (layer counts, shapes, tensor names) are skipped for models without a DonorInfo.
The checks live by family: the stage graph, a stage's keys, slices, parameters, tokenizer and
vocabulary, donors.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..donor import DonorInfo
from ..plan import StagePlan, plan_stage
from ..recipe import Recipe
from .context import StageContext
from .donor_checks import check_architecture, check_planned_inputs, check_tied_head
from .findings import Finding, Severity
from .parameter_checks import (
    check_della_epsilon,
    check_filters,
    check_normalized_weights,
    check_parameter_values,
    check_planned_parameters,
    check_required_parameters,
    check_whole_numbers,
)
from .recipe_checks import check_base, check_keys, check_models
from .slice_checks import check_slices
from .stage_graph import stage_graph
from .tokenizer_checks import check_token_overrides, check_tokenizer, check_vocab

__all__ = ["Finding", "Severity", "validate_recipe"]

_NO_DONOR_ERRORS: Mapping[str, str] = MappingProxyType({})
_NO_PLANS: Mapping[int, StagePlan] = MappingProxyType({})


def validate_recipe(
    recipe: Recipe,
    donors: Mapping[str, DonorInfo],
    donor_errors: Mapping[str, str] = _NO_DONOR_ERRORS,
    plans: Mapping[int, StagePlan] = _NO_PLANS,
) -> list[Finding]:
    """Every problem of ``recipe``, ordered by stage and slice.

    Args:
        recipe: The recipe to check.
        donors: Donor facts by model name; stages' outputs are planned and added here.
        donor_errors: Why a model could not be resolved, by model name.
        plans: Stages already planned with the same donors, by stage index (a designer's
            :func:`~merger_gui.core.partial_plan.plan_partially`); others are planned here.
    """
    findings: list[Finding] = []
    if not recipe.stages:
        findings.append(Finding("error", "empty-recipe", "the recipe has no merge stage"))
    graph_findings, order = stage_graph(recipe)
    findings += graph_findings
    known = dict(donors)
    reported: set[str] = set()
    for index in order:
        check = StageContext(recipe, index, known, donor_errors, reported)
        findings += _check_stage(check, plans.get(index))
        stage = recipe.stages[index]
        if stage.name and check.plan is not None:
            known[stage.name] = check.plan.output
    findings.sort(key=lambda f: tuple(-1 if v is None else v for v in (f.stage, f.slice, f.source)))
    return findings


def _check_stage(ctx: StageContext, planned: StagePlan | None) -> list[Finding]:
    """Every check of one stage, in the order its findings read best; plans the stage on the way."""
    check_keys(ctx)
    check_models(ctx)
    check_slices(ctx)
    check_base(ctx)
    check_tokenizer(ctx)
    for scope in ctx.scopes():
        check_parameter_values(ctx, scope)
    check_required_parameters(ctx)
    check_architecture(ctx)
    check_vocab(ctx)
    check_tied_head(ctx)
    _plan_and_check(ctx, planned)
    return ctx.findings


def _plan_and_check(ctx: StageContext, planned: StagePlan | None) -> None:
    """Plan the stage when every donor is known, and run the checks that need the plan."""
    known = ctx.known_models()
    check_filters(ctx, {t.name for _, d in known for t in d.tensors})
    if len(known) < len(ctx.stage.referenced_models) or not known:
        return
    try:
        ctx.plan = planned or plan_stage(ctx.stage, ctx.donors, ctx.index)
    except Exception as error:  # noqa: BLE001 — validation reports, it never raises
        ctx.add("error", "plan-failed", f"the stage cannot be planned: {error}")
        return
    check_planned_parameters(ctx, ctx.plan)
    check_planned_inputs(ctx, ctx.plan)
    check_normalized_weights(ctx, ctx.plan)
    check_della_epsilon(ctx, ctx.plan)
    check_whole_numbers(ctx, ctx.plan)
    check_token_overrides(ctx)
