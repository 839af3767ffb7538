"""The one mutable piece of application state: the open recipe and its undo stack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from merger_gui.core.recipe import Recipe, Stage

Edit = Callable[[Recipe], Recipe]


@dataclass(frozen=True)
class Companion:
    """A change of state kept beside the recipe (the donor registry) that an edit makes too.

    ``redo`` runs when the edit is done or redone, ``undo`` when it is undone, each just
    before the recipe changes, so views that follow the recipe see both in step.
    """

    redo: Callable[[], None]
    undo: Callable[[], None]


class _RecipeCommand(QUndoCommand):
    """Swap between two recipe values; every edit is one of these."""

    def __init__(self, document: RecipeDocument, before: Recipe, after: Recipe, text: str,
                 companion: Companion | None = None) -> None:
        super().__init__(text)
        self._document = document
        self._before = before
        self._after = after
        self._companion = companion

    def redo(self) -> None:
        if self._companion is not None:
            self._companion.redo()
        self._document._set_recipe(self._after)

    def undo(self) -> None:
        if self._companion is not None:
            self._companion.undo()
        self._document._set_recipe(self._before)


class RecipeDocument(QObject):
    """Holds the current :class:`Recipe`, its file path, the source text and a ``QUndoStack``.

    Views render from :attr:`recipe` when :attr:`recipe_changed` fires and change it only
    through :meth:`apply` (one undo step per call).
    """

    recipe_changed = Signal(object)  # Recipe
    path_changed = Signal(object)  # Path | None
    current_stage_changed = Signal(int)
    selection_changed = Signal(object)  # (stage index, slice index) | None

    def __init__(self, recipe: Recipe | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._recipe = recipe or Recipe((Stage("passthrough", slices=()),))
        self._path: Path | None = None
        self._source_text: str | None = None  # the imported file's text, to keep its comments
        self._current_stage = 0
        self._selection: tuple[int, int] | None = None
        self.undo_stack = QUndoStack(self)

    @property
    def recipe(self) -> Recipe:
        return self._recipe

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def source_text(self) -> str | None:
        return self._source_text

    @property
    def current_stage(self) -> int:
        return min(self._current_stage, max(0, len(self._recipe.stages) - 1))

    @property
    def stage(self) -> Stage:
        return self._recipe.stages[self.current_stage]

    @property
    def selection(self) -> tuple[int, int] | None:
        return self._selection

    @property
    def is_modified(self) -> bool:
        return not self.undo_stack.isClean()

    def apply(self, edit: Edit | Recipe, text: str, companion: Companion | None = None) -> None:
        """Apply an edit (a function of the recipe, or a new recipe) as one undo step.

        ``companion`` is done and undone with the edit (only when the recipe changes).
        """
        after = edit(self._recipe) if callable(edit) else edit
        if after != self._recipe:
            self.undo_stack.push(_RecipeCommand(self, self._recipe, after, text, companion))

    def apply_to_stage(self, edit: Callable[[Stage], Stage], text: str) -> None:
        """Apply an edit to the current stage only."""
        index = self.current_stage
        self.apply(lambda r: r.replace_stage(index, edit(r.stages[index])), text)

    def load(self, recipe: Recipe, path: Path | None = None, source_text: str | None = None) -> None:
        """Replace the document (open/new): clears undo history and marks it clean."""
        self._path = path
        self._source_text = source_text
        self._current_stage = 0
        self._selection = None
        self.undo_stack.clear()
        self._set_recipe(recipe)
        self.path_changed.emit(path)
        self.current_stage_changed.emit(0)

    def mark_saved(self, path: Path, source_text: str) -> None:
        self._path = path
        self._source_text = source_text
        self.undo_stack.setClean()
        self.path_changed.emit(path)

    def set_current_stage(self, index: int) -> None:
        if index != self._current_stage and 0 <= index < len(self._recipe.stages):
            self._current_stage = index
            self._selection = None
            self.current_stage_changed.emit(index)
            self.selection_changed.emit(None)

    def select_slice(self, slice_index: int | None) -> None:
        selection = None if slice_index is None else (self.current_stage, slice_index)
        if selection != self._selection:
            self._selection = selection
            self.selection_changed.emit(selection)

    def _set_recipe(self, recipe: Recipe) -> None:
        self._recipe = recipe
        if self._current_stage >= len(recipe.stages):
            self._current_stage = max(0, len(recipe.stages) - 1)
        self.recipe_changed.emit(recipe)
