"""Checks across stages: unique names, distinct intermediate folders, no cycles."""

from __future__ import annotations

from ..errors import RecipeError
from ..output_folders import folder_key, stage_folder_name, stage_name_problem
from ..plan import stage_order
from ..recipe import Recipe
from .findings import Finding


def stage_graph(recipe: Recipe) -> tuple[list[Finding], tuple[int, ...]]:
    """Duplicate-name and cycle findings, and the order to check stages in."""
    findings = []
    first: dict[str, int] = {}
    folders: dict[str, int] = {}
    for i, stage in enumerate(recipe.stages):
        if not stage.name:
            continue
        if stage.name in first:
            findings.append(Finding(
                "error", "duplicate-stage-name",
                f"stages {first[stage.name] + 1} and {i + 1} are both named {stage.name!r}; "
                "stage names must be unique", i, key="name", stage_name=stage.name))
            continue
        first[stage.name] = i
        problem = stage_name_problem(stage.name)
        other = folders.setdefault(folder_key(stage.name), i)
        if problem:
            findings.append(Finding("error", "stage-folder-name", problem, i, key="name", stage_name=stage.name))
        elif other != i:
            findings.append(Finding(
                "error", "stage-folder-name",
                f"stages {recipe.stages[other].name!r} and {stage.name!r} would share the intermediate folder "
                f"{stage_folder_name(stage.name)!r}; rename one", i, key="name", stage_name=stage.name))
    if findings:
        return findings, tuple(range(len(recipe.stages)))
    try:
        return findings, stage_order(recipe)
    except RecipeError as error:
        findings.append(Finding("error", "stage-cycle", f"{error.bare_message}; a stage can only use "
                                "stages that do not use it", key="name"))
        return findings, tuple(range(len(recipe.stages)))
