"""Helpers shared by the recipe commands: ``--donor`` options, loading a recipe, its donors, JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import RecipeError, UserError
from merger_gui.core.profiles import guess_profile, profile_names
from merger_gui.core.recipe import Recipe
from merger_gui.core.resolve import parse_donor_override, parse_donor_overrides, resolve_recipe_donors
from merger_gui.core.validation import Finding, validate_recipe


class HelpFormatter(argparse.HelpFormatter):
    """Fills ``{profiles}`` in option help with the built-in profile names when help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        return text.replace("{profiles}", ", ".join(profile_names())) if text else text


class CommandLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``error: … (see `merger-gui plan --help`)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``RECIPE`` (a mergekit YAML file)."""
    parser.add_argument("recipe", metavar="RECIPE", help="mergekit recipe (.yaml); multi-document files are stages")


def donor_item(text: str) -> str:
    """A ``--donor`` value, checked to be ``NAME=REF`` (a usage error otherwise)."""
    try:
        parse_donor_override(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_donor_argument(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--donor NAME=REF`` option (into ``args.donor``)."""
    parser.add_argument("--donor", action="append", default=[], type=donor_item, metavar="NAME=REF",
                        help="use REF (folder, repo id or profile:NAME) for the recipe's model NAME; repeatable. "
                             "Built-in profiles: {profiles}")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` switch."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def load_recipe_file(path: str | Path) -> Recipe:
    """Read a recipe file.

    Raises:
        UserError: the file does not exist; RecipeError (a UserError) when it cannot be parsed.
    """
    from merger_gui.core.recipe_yaml import load_recipe

    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe {path} does not exist" if not file.exists() else f"recipe {path} is not a file")
    try:
        return load_recipe(file)
    except RecipeError as error:
        located = RecipeError(f"{path}: {error}")
        located.line = error.line  # kept for `validate --json`
        raise located from None


def donors_for(recipe: Recipe, recipe_path: str | Path, donor_items: Sequence[str]
               ) -> tuple[dict[str, DonorInfo], dict[str, str]]:
    """Resolve the recipe's donors with ``--donor`` overrides; relative folders are looked up next
    to the recipe first.

    Returns:
        (donors by model name, one-line error messages by model name).
    """
    overrides = parse_donor_overrides(donor_items)
    return resolve_recipe_donors(recipe, overrides, base_dir=Path(recipe_path).resolve().parent)


def donor_hint(name: str) -> str:
    """How to map model ``name`` to a usable donor, with a profile guessed from the name when possible.

    ``map it with --donor Thorns-13B=profile:llama-2-13b or a folder/repo id (profiles: …)``
    """
    shown = ", ".join(profile_names()[:4])
    return (f"map it with --donor {name}=profile:{guess_profile(name) or 'NAME'} or a folder/repo id "
            f"(profiles: {shown}, …; all in `merger-gui estimate --help`)")


def _with_hint(name: str, message: str) -> str:
    # Only a donor that was not found is helped by mapping it; a corrupt one needs fixing.
    return f"{message}; {donor_hint(name)}" if " not found" in message else message


def with_donor_hints(errors: Mapping[str, str]) -> dict[str, str]:
    """Each "not found" donor error followed by its :func:`donor_hint`."""
    return {name: _with_hint(name, message) for name, message in errors.items()}


def require_donors(errors: Mapping[str, str]) -> None:
    """Raise one UserError line for the first unresolvable donor, naming the others, with a hint."""
    if not errors:
        return
    name, message = next(iter(errors.items()))
    others = [n for n in errors if n != name]
    more = f" (and {len(others)} more: {', '.join(others)})" if others else ""
    raise UserError(_with_hint(name, f"{message}{more}"))


def checked_recipe(recipe: Recipe, recipe_path: str | Path, donor_items: Sequence[str]
                   ) -> tuple[dict[str, DonorInfo], list[Finding]]:
    """The recipe's donors (see :func:`donors_for`) and its validation findings.

    Raises:
        UserError: a source names a stage that does not exist, or a donor cannot be resolved.
    """
    donors, errors = donors_for(recipe, recipe_path, donor_items)
    findings = validate_recipe(recipe, donors, errors)
    typo = next((f for f in findings if f.code == "unknown-stage"), None)
    if typo is not None:  # clearer than "no such donor" for a misspelt stage name
        raise UserError(f"{typo.location}: {typo.message}")
    require_donors(errors)
    return donors, findings


def printable(text: str) -> str:
    """``text`` with control and invisible characters escaped (``\\n``, ``\\x1b``, ``\\u200b``): a name
    from a recipe or a file can neither break a message's one line nor drive the terminal."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def report_errors(findings: Sequence[Finding]) -> int:
    """Print each error among ``findings`` on stderr as ``error: LOCATION: message``; return how many."""
    errors = [f for f in findings if f.is_error]
    for finding in errors:
        print(printable(f"error: {finding.location}: {finding.message}"), file=sys.stderr)
    return len(errors)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON, non-ASCII text kept readable."""
    print(json.dumps(data, indent=2, ensure_ascii=False))
