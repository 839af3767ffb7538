"""Can this recipe be merged now? One answer for the merge panel and the engine.

A merge needs every donor chosen and holding weights (a model folder or a Hub repo, not a
shape profile), a recipe without validation errors and a plan for every stage. Reading the
weights and checking disk space are left to the engine: they need the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .donor import DonorInfo
from .partial_plan import PartialPlan, plan_partially
from .recipe import Recipe
from .validation import Finding, validate_recipe

_NO_ERRORS: Mapping[str, str] = {}


def donor_blocker(name: str, donor: DonorInfo | None, error: str | None = None) -> str | None:
    """Why model ``name`` cannot be read for a merge, or None when it can."""
    if donor is None:
        return f"{name}: {error}" if error else f"{name}: no donor chosen yet"
    if donor.kind == "profile":
        return f"{name} is a shape profile ({donor.ref}) without weights: map it to a model folder or repo"
    if donor.kind != "hub" and donor.path is None:
        return f"{name} ({donor.ref}) has no local weights"
    return None


def merge_readiness(recipe: Recipe, donors: Mapping[str, DonorInfo],
                    donor_errors: Mapping[str, str] = _NO_ERRORS, *,
                    findings: Sequence[Finding] | None = None,
                    partial: PartialPlan | None = None) -> list[str]:
    """Why ``recipe`` cannot be merged with ``donors``, one line each; empty when it can.

    Args:
        recipe: The recipe to merge.
        donors: Donor facts by the recipe's model name (stages' outputs excluded).
        donor_errors: Why a model could not be resolved, by model name.
        findings: :func:`validate_recipe`'s findings when already at hand (else validated here).
        partial: :func:`plan_partially`'s result when already at hand (else planned here).
    """
    stage_names = set(recipe.stage_names())
    models = dict.fromkeys(m for s in recipe.stages for m in s.referenced_models if m not in stage_names)
    reasons = [r for m in models if (r := donor_blocker(m, donors.get(m), donor_errors.get(m))) is not None]
    if findings is None:
        findings = validate_recipe(recipe, donors, donor_errors)
    listed = set(donor_errors.values())  # already given above, by donor name
    reasons += [f"{f.location}: {f.message}" for f in findings if f.is_error and f.message not in listed]
    if not reasons:
        partial = partial if partial is not None else plan_partially(recipe, donors)
        if partial.plan is None:
            reasons.append(partial.error or "the recipe has no layer plan")
    return reasons
