"""Read and write recipe YAML in mergekit's schema, keeping a user's file intact on save.

The public face of four modules, one job each: :mod:`recipe_load` reads bounded YAML,
:mod:`recipe_parse` turns its documents into the model, :mod:`recipe_dump` writes fresh
YAML that mergekit 0.1.5 (PyYAML, YAML 1.1) reads with the same meaning, and
:mod:`recipe_roundtrip` edits an imported file's documents in place on save.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import RecipeError
from .recipe import Recipe
from .recipe_dump import dump_documents, fresh_node
from .recipe_load import MAX_RECIPE_BYTES, load_documents, load_recipe, load_recipe_text, read_recipe_text
from .recipe_roundtrip import edit_documents

__all__ = ["MAX_RECIPE_BYTES", "dump_recipe", "load_recipe", "load_recipe_text", "read_recipe_text", "save_recipe"]


def dump_recipe(recipe: Recipe, original_text: str | None = None) -> str:
    """Recipe YAML that mergekit reads with the same meaning.

    Args:
        recipe: The recipe to write; each stage becomes one document.
        original_text: The text the recipe was imported from. When given (and readable),
            it is edited in place: comments, key order, unknown keys, anchors and the
            formatting of every untouched line are kept.
    """
    if original_text is not None:
        try:
            documents = load_documents(original_text)
        except RecipeError:
            documents = None  # not a readable recipe any more: write it afresh
        if documents is not None:
            return edit_documents(recipe, original_text, [doc for doc, _ in documents])
    return dump_documents([fresh_node(stage) for stage in recipe.stages])


def save_recipe(recipe: Recipe, path: str | Path, original_text: str | None = None) -> str:
    """Write :func:`dump_recipe`'s text to ``path`` atomically and return the text."""
    text = dump_recipe(recipe, original_text)
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return text
