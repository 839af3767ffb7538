"""``validate``, ``plan`` and ``estimate`` of a mergekit-moe recipe (one with ``experts:``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import RecipeError
from merger_gui.core.estimator import EstimateOptions, MoeEstimate, estimate_moe
from merger_gui.core.moe_output import OUTPUT_CLASSES, moe_architecture, moe_parameters
from merger_gui.core.moe_recipe import (
    MoeExpert, MoeRecipe, is_moe_text, load_moe_text, moe_problems, resolve_moe_donors,
)
from merger_gui.core.recipe_load import read_recipe_text
from merger_gui.core.resolve import parse_donor_overrides
from merger_gui.core.validation import Finding

from .common import print_json, report_errors, require_donors, with_donor_hints


def moe_recipe_file(path: str | Path) -> MoeRecipe | None:
    """The MoE recipe in file ``path``, or None when it is no file or a merge recipe.

    Raises:
        RecipeError: an MoE recipe mergekit-moe would refuse, prefixed with the path.
    """
    if not Path(path).is_file():
        return None  # load_recipe_file words the error
    text = read_recipe_text(path)
    if not is_moe_text(text):
        return None
    try:
        return load_moe_text(text)
    except RecipeError as error:
        located = RecipeError(f"{path}: {error}")
        located.line = error.line
        raise located from None


def moe_donors(recipe: MoeRecipe, path: str | Path, donor_items: Sequence[str]
               ) -> tuple[dict[str, DonorInfo], dict[str, str]]:
    """The base and experts, resolved with ``--donor`` overrides and folders next to the recipe first."""
    return resolve_moe_donors(recipe, parse_donor_overrides(donor_items), Path(path).resolve().parent)


def moe_findings(recipe: MoeRecipe, donors: Mapping[str, DonorInfo], errors: Mapping[str, str]) -> list[Finding]:
    """Every problem as a finding: the recipe's, unresolved donors (with hints), then the donors' shapes."""
    own = moe_problems(recipe)
    findings = [Finding("error", "moe-recipe", problem) for problem in own]
    findings += [Finding("error", "donor-unavailable", message, key=name)
                 for name, message in with_donor_hints(errors).items()]
    if not errors:  # the shape checks need every donor
        findings += [Finding("error", "moe-donor", problem) for problem in moe_problems(recipe, donors)[len(own):]]
    return findings


def run_validate(recipe: MoeRecipe, args: argparse.Namespace) -> int:
    """``validate`` of an MoE recipe: findings (or ``--json``), exit status 1 with errors."""
    from .validate_command import findings_json, format_finding, summary

    findings = moe_findings(recipe, *moe_donors(recipe, args.recipe, args.donor))
    if args.json:
        print_json(findings_json(findings))
    else:
        for finding in findings:
            print(format_finding(finding))
        print(summary(findings))
    return 1 if findings else 0


def run_plan(recipe: MoeRecipe, args: argparse.Namespace) -> int:
    """``plan`` of an MoE recipe: base, experts, layers and parameters; errors on stderr."""
    donors, errors = moe_donors(recipe, args.recipe, args.donor)
    require_donors(errors)
    failed = report_errors(moe_findings(recipe, donors, errors))
    base = donors[recipe.base_model]
    try:
        moe_architecture(recipe, base)
    except RecipeError:
        return 1  # reported above: no output to plan
    if args.json:
        print_json(moe_plan_json(recipe, base))
    else:
        print(render_moe_plan(recipe, base))
    return 1 if failed else 0


def moe_plan_json(recipe: MoeRecipe, base: DonorInfo) -> dict[str, Any]:
    """``plan --json`` of an MoE recipe."""
    counts = moe_parameters(recipe, base)
    return {
        "kind": "moe", "architecture": OUTPUT_CLASSES[moe_architecture(recipe, base)][0],
        "base_model": recipe.base_model, "gate_mode": recipe.gate_mode, "dtype": recipe.dtype,
        "experts_per_token": recipe.experts_per_token, "num_layers": base.num_layers,
        "total_params": counts.total, "active_params": counts.active, "expert_params": counts.expert_mlp,
        "experts": [_expert_json(e) for e in recipe.experts],
        "shared_experts": [_expert_json(e) for e in recipe.shared_experts],
    }


def _expert_json(expert: MoeExpert) -> dict[str, Any]:
    return {"source_model": expert.source_model, "positive_prompts": list(expert.positive_prompts),
            "negative_prompts": list(expert.negative_prompts), "residual_scale": expert.residual_scale,
            "noise_scale": expert.noise_scale}


def render_moe_plan(recipe: MoeRecipe, base: DonorInfo) -> str:
    """The plan as text: heading, base, parameters and one line per expert (shared ones last)."""
    counts = moe_parameters(recipe, base)
    lines = [
        f"MoE (mergekit-moe, {moe_architecture(recipe, base)} output): {len(recipe.experts)} experts, "
        f"{recipe.experts_per_token} per token, {base.num_layers} layers, gate_mode {recipe.gate_mode}",
        f"  base (attention, norms, embeddings, config and tokenizer): {recipe.base_model}",
        f"  parameters: {counts.total:,} total, {counts.active:,} active per token "
        f"({counts.expert_mlp:,} per expert)",
        "  experts (each layer's MLP from the donor's same layer):",
    ]
    lines += [_expert_line(str(i), e) for i, e in enumerate(recipe.experts, 1)]
    lines += [_expert_line("shared", e) for e in recipe.shared_experts]
    return "\n".join(lines)


def _expert_line(label: str, expert: MoeExpert) -> str:
    scales = "".join(f", {key} {value:g}" for key, value in (("residual_scale", expert.residual_scale),
                                                            ("noise_scale", expert.noise_scale)) if value is not None)
    return (f"    {label}  {expert.source_model}: {len(expert.positive_prompts)} positive, "
            f"{len(expert.negative_prompts)} negative prompts{scales}")


def estimate_moe_recipe(recipe: MoeRecipe, path: str | Path, donor_items: Sequence[str],
                        options: EstimateOptions) -> MoeEstimate | None:
    """The MoE's estimate; None, with its errors reported, when the recipe has errors."""
    donors, errors = moe_donors(recipe, path, donor_items)
    require_donors(errors)
    if report_errors(moe_findings(recipe, donors, errors)):
        return None
    return estimate_moe(recipe, donors[recipe.base_model], options)
