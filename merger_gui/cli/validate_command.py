"""``merger-gui validate``: every problem of a recipe, before anything is downloaded or merged."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from merger_gui.core.errors import RecipeError, UserError
from merger_gui.core.validation import Finding, validate_recipe

from .common import (
    add_donor_argument, add_json_argument, add_recipe_argument, donors_for, load_recipe_file, print_json, printable,
    with_donor_hints,
)
from .moe_commands import moe_recipe_file, run_validate


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a recipe: ranges, donors, shapes, vocabularies, filters, stage names",
        description="Check a recipe for what mergekit gets silently wrong and for plain mistakes. "
                    "Exit status: 0 without errors (warnings allowed), 1 with errors.",
    )
    add_recipe_argument(parser)
    add_donor_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        moe = moe_recipe_file(args.recipe)
        if moe is not None:
            return run_validate(moe, args)
        recipe = load_recipe_file(args.recipe)
    except UserError as error:
        if not args.json:
            raise  # one line on stderr
        print_json(unloadable_json(error))
        return 1
    donors, errors = donors_for(recipe, args.recipe, args.donor)
    findings = validate_recipe(recipe, donors, with_donor_hints(errors))
    if args.json:
        print_json(findings_json(findings))
    else:
        for finding in findings:
            print(format_finding(finding))
        print(summary(findings))
    return 1 if any(f.is_error for f in findings) else 0


def format_finding(finding: Finding) -> str:
    """One line: severity, code, location and message."""
    return printable(f"{finding.severity:<7}  {finding.code}  {finding.location}: {finding.message}")


def summary(findings: Sequence[Finding]) -> str:
    """The last line: ``2 errors, 1 warning`` or ``no problems found``."""
    if not findings:
        return "no problems found"
    errors = sum(f.is_error for f in findings)
    return f"{_count(errors, 'error')}, {_count(len(findings) - errors, 'warning')}"


def findings_json(findings: Sequence[Finding]) -> dict[str, Any]:
    """``--json`` output: validity, counts and every finding with its location."""
    errors = sum(f.is_error for f in findings)
    return {
        "valid": errors == 0,
        "errors": errors,
        "warnings": len(findings) - errors,
        "findings": [asdict(f) | {"location": f.location} for f in findings],
    }


def unloadable_json(error: UserError) -> dict[str, Any]:
    """``--json`` output for a recipe that cannot be read or parsed: that error as the one finding."""
    code = "invalid-recipe" if isinstance(error, RecipeError) else "unreadable-recipe"
    data = findings_json([Finding("error", code, str(error))])
    data["findings"][0]["line"] = getattr(error, "line", None)
    return data


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
