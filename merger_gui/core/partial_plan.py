"""Plan what can be planned of a recipe being edited: every stage its plan or the reason it has none.

:func:`plan_recipe` stops at the first stage that cannot be planned; a designer still wants
the layers of the stages that can. :func:`plan_partially` plans each stage in dependency
order (later stages see earlier stages' outputs) and keeps, per stage, the plan or a one-line
error. It never raises: :mod:`validation` explains what is wrong in detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .donor import DonorInfo
from .errors import RecipeError
from .plan import Plan, StagePlan, plan_stage, stage_order
from .recipe import Recipe

NO_MODELS = "the recipe has no models"


@dataclass(frozen=True)
class PartialPlan:
    """The stages of a recipe that could be planned, and why the others could not.

    Attributes:
        order: Stage indices in dependency order (file order when the stages form a cycle).
        stage_plans: Plan of every stage that could be planned, by stage index.
        stage_errors: Why a stage could not be planned, by stage index.
        order_error: Duplicate stage names or a dependency cycle.
        known_donors: The donors given plus the outputs of the stages planned.
        stage_labels: How errors name their stage (only in a recipe of several stages).
    """

    order: tuple[int, ...] = ()
    stage_plans: Mapping[int, StagePlan] = field(default_factory=dict)
    stage_errors: Mapping[int, str] = field(default_factory=dict)
    order_error: str | None = None
    known_donors: Mapping[str, DonorInfo] = field(default_factory=dict)
    stage_labels: Mapping[int, str] = field(default_factory=dict)

    @cached_property
    def errors(self) -> tuple[str, ...]:
        """One line per problem, the order's first, then the stages' in dependency order."""
        lines = [self.order_error] if self.order_error else []
        for index in self.order:
            if index in self.stage_errors:
                label = self.stage_labels.get(index)
                lines.append(f"{label}: {self.stage_errors[index]}" if label else self.stage_errors[index])
        return tuple(lines)

    @property
    def error(self) -> str | None:
        """The first problem; a recipe with nothing to plan says it has no models."""
        errors = self.errors
        if errors:
            return errors[0]
        return None if self.stage_plans else NO_MODELS

    @cached_property
    def plan(self) -> Plan | None:
        """The whole plan, when every stage could be planned."""
        if self.errors or not self.stage_plans:
            return None
        return Plan(tuple(self.stage_plans[i] for i in self.order))


def plan_partially(recipe: Recipe, donors: Mapping[str, DonorInfo]) -> PartialPlan:
    """Plan every stage of ``recipe`` that can be planned, in dependency order.

    Args:
        recipe: The recipe, valid or not.
        donors: Donor facts by model name; stages' outputs are added as they are planned.
    """
    known = dict(donors)
    order_error = None
    try:
        order = stage_order(recipe)
    except RecipeError as exc:
        order, order_error = tuple(range(len(recipe.stages))), str(exc)
    plans: dict[int, StagePlan] = {}
    errors: dict[int, str] = {}
    for index in order:
        stage = recipe.stages[index]
        try:
            plans[index] = plan_stage(stage, known, index)
        except Exception as exc:  # noqa: BLE001 - a recipe being edited may be broken in any way
            errors[index] = str(exc)
            continue
        if stage.name:
            known[stage.name] = plans[index].output
    labels = {i: f"stage {s.name!r}" if s.name else f"stage {i + 1}" for i, s in enumerate(recipe.stages)} \
        if recipe.is_multi_stage else {}
    return PartialPlan(order, plans, errors, order_error, known, labels)
