"""A mergekit-moe recipe in the designer: base, gate mode, experts and their prompts, estimate and merge.

The panel keeps its own :class:`MoeRecipe` and undo stack (the merge recipe's document holds
stages, not experts); each donor pick or prompt edit is one pure edit and one undo step. Saving
edits the loaded text in place (:func:`edit_moe_text`), so the file's comments survive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent, QFocusEvent, QResizeEvent, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget,
)

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import RecipeError
from merger_gui.core.moe_recipe import (
    MoeRecipe, moe_problems, output_architecture, set_expert_prompts, set_expert_source,
)
from merger_gui.core.moe_roundtrip import edit_moe_text

from .eliding_combo import ElidingComboBox
from .merge_panel import NOTE_STYLE
from .moe_estimate import MoeEstimateBox
from .moe_merge import MoeMergeBox

EXPERT_MIN_WIDTH = 300  # an expert's card; as many columns as fit, at most MAX_COLUMNS
MAX_COLUMNS = 4
PROMPT_HEIGHT = 60  # three lines


class PromptEdit(QPlainTextEdit):
    """Prompts, one a line; ``editingFinished`` when focus leaves (one undo step per edit, not per key)."""

    editingFinished = Signal()

    def focusOutEvent(self, event: QFocusEvent) -> None:
        super().focusOutEvent(event)
        self.editingFinished.emit()

    def prompts(self) -> tuple[str, ...]:
        return tuple(self.toPlainText().splitlines())

    def show_prompts(self, prompts: tuple[str, ...]) -> None:
        if self.prompts() != prompts:  # no echo while the user types
            self.setPlainText("\n".join(prompts))


class _MoeCommand(QUndoCommand):
    def __init__(self, panel: MoePanel, before: MoeRecipe, after: MoeRecipe, text: str) -> None:
        super().__init__(text)
        self._panel, self._before, self._after = panel, before, after

    def redo(self) -> None:
        self._panel._set_recipe(self._after)

    def undo(self) -> None:
        self._panel._set_recipe(self._before)


class ExpertBox(QGroupBox):
    """One expert's card: its donor, then its positive and negative prompts."""

    def __init__(self, index: int) -> None:
        super().__init__(f"Expert {index + 1}")
        self.donor = ElidingComboBox(12)
        self.donor.setToolTip("The dense donor whose MLPs become this expert in every layer")
        self.positive = PromptEdit()
        self.negative = PromptEdit()
        layout = QVBoxLayout(self)
        layout.setSpacing(3)
        layout.addWidget(self.donor)
        for edit, title, tip in ((self.positive, "Positive prompts", "route tokens like these here"),
                                 (self.negative, "Negative prompts", "route tokens like these elsewhere")):
            edit.setPlaceholderText("one a line")
            edit.setToolTip(f"{title}, one a line: {tip}")
            edit.setFixedHeight(PROMPT_HEIGHT)
            layout.addWidget(QLabel(title))
            layout.addWidget(edit)
        self.setMinimumWidth(EXPERT_MIN_WIDTH - 40)


class MoePanel(QWidget):
    """The MoE recipe's editor; ``recipe_changed`` after every edit, undo and redo."""

    recipe_changed = Signal(object)  # MoeRecipe
    save_requested = Signal()  # the page's Save button: the window saves (and words an error)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self._recipe: MoeRecipe | None = None
        self._donors: Mapping[str, DonorInfo] = {}
        self._errors: Mapping[str, str] = {}
        self._text: str | None = None  # the file as loaded or last saved, edited in place on save
        self.path: Path | None = None
        self.title = QLabel()
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.problems = QLabel()
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet(NOTE_STYLE)
        self.save_button = QPushButton("Save MoE recipe")
        self.save_button.clicked.connect(self.save_requested)
        self.undo_stack.cleanChanged.connect(self._show_title)
        self.experts: list[ExpertBox] = []
        self._experts_grid = QGridLayout()
        self._columns = 0
        self.estimate_box = MoeEstimateBox()
        self.merge_box = MoeMergeBox()

        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.problems)
        layout.addLayout(self._experts_grid)
        layout.addWidget(self.estimate_box)
        layout.addWidget(self.merge_box)
        layout.addStretch(1)

    @property
    def recipe(self) -> MoeRecipe | None:
        return self._recipe

    @property
    def is_modified(self) -> bool:
        """Edits not saved yet."""
        return self._recipe is not None and not self.undo_stack.isClean()

    def load(self, recipe: MoeRecipe, donors: Mapping[str, DonorInfo], path: Path | None = None,
             errors: Mapping[str, str] | None = None) -> None:
        """Show ``recipe`` (its donors resolved by name, as far as they are; ``errors`` says why
        the others are not) and keep ``path``'s text for saving; clears the undo history."""
        self._donors, self._errors, self.path = donors, errors or {}, path
        self._text = _read_text(path)
        self.undo_stack.clear()
        for box in self.experts:
            box.deleteLater()
        self.experts = [self._expert_box(i) for i in range(len(recipe.experts))]
        self._columns = 0
        self._arrange_experts()
        self._set_recipe(recipe)
        self._show_title()

    def apply(self, edit: Callable[[MoeRecipe], MoeRecipe], text: str) -> None:
        """Apply a pure edit of the MoE recipe as one undo step (none when it changes nothing)."""
        assert self._recipe is not None
        after = edit(self._recipe)
        if after != self._recipe:
            self.undo_stack.push(_MoeCommand(self, self._recipe, after, text))

    def save(self, path: Path) -> None:
        """Write the recipe as mergekit-moe YAML, the loaded file's comments and order kept, and mark it saved."""
        assert self._recipe is not None
        text = edit_moe_text(self._recipe, self._text if path == self.path else None)
        temp = path.with_name(f".{path.name}.partial")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)  # never half a recipe
        self.path, self._text = path, text
        self.undo_stack.setClean()
        self._show_title()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.merge_box.runner.shutdown()  # cancels a running merge and waits for its thread
        super().closeEvent(event)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._arrange_experts()

    def _arrange_experts(self) -> None:
        """Expert cards side by side, as many columns as the width allows."""
        columns = max(1, min(MAX_COLUMNS, len(self.experts), self.width() // EXPERT_MIN_WIDTH))
        if columns == self._columns:
            return
        self._columns = columns
        while self._experts_grid.count():
            self._experts_grid.takeAt(0)
        for index, box in enumerate(self.experts):
            self._experts_grid.addWidget(box, index // columns, index % columns)
        for column in range(MAX_COLUMNS):
            self._experts_grid.setColumnStretch(column, 1 if column < columns else 0)

    def _expert_box(self, index: int) -> ExpertBox:
        box = ExpertBox(index)
        box.donor.activated.connect(partial(self._pick_donor, index))
        box.positive.editingFinished.connect(partial(self._edit_prompts, index))
        box.negative.editingFinished.connect(partial(self._edit_prompts, index))
        return box

    def _pick_donor(self, index: int, _row: int) -> None:
        name = self.experts[index].donor.currentText()
        self.apply(lambda r: set_expert_source(r, index, name), f"Expert {index + 1} from {name}")

    def _edit_prompts(self, index: int) -> None:
        box = self.experts[index]
        self.apply(lambda r: set_expert_prompts(r, index, box.positive.prompts(), box.negative.prompts()),
                   f"Prompts of expert {index + 1}")

    def _show_title(self, *_: object) -> None:
        name = self.path.name if self.path else "untitled"
        unsaved = "" if self.undo_stack.isClean() else " — unsaved changes"
        self.title.setText(f"<b>MoE recipe</b> {name}{unsaved}  <span style='color: gray'>(mergekit-moe)</span>")

    def _set_recipe(self, recipe: MoeRecipe) -> None:
        self._recipe = recipe
        dtype = f", dtype {recipe.dtype}" if recipe.dtype else ""
        shared = f" + {len(recipe.shared_experts)} shared" if recipe.shared_experts else ""
        self.summary.setText(f"Base <b>{recipe.base_model}</b> · gate_mode <b>{recipe.gate_mode}</b> · "
                             f"{recipe.experts_per_token} of {len(recipe.experts)} experts per token{shared}{dtype}"
                             f" · output <b>{self._output_architecture(recipe)}</b>")
        problems = self._problems(recipe)
        self.problems.setText("\n".join(f"• {p}" for p in problems))
        self.problems.setVisible(bool(problems))
        names = list(dict.fromkeys([*recipe.referenced_models, *self._donors]))
        for box, expert in zip(self.experts, recipe.experts):
            box.donor.blockSignals(True)
            box.donor.clear()
            box.donor.addItems(names)
            box.donor.setCurrentText(expert.source_model)
            box.donor.blockSignals(False)
            box.positive.show_prompts(expert.positive_prompts)
            box.negative.show_prompts(expert.negative_prompts)
        self.estimate_box.show_moe(recipe, self._donors.get(recipe.base_model))
        self.merge_box.show_recipe(recipe, self._donors, self.path)
        self.recipe_changed.emit(recipe)

    def _output_architecture(self, recipe: MoeRecipe) -> str:
        """What mergekit-moe builds from it, as far as the base is known ("?" when nothing fits)."""
        base = self._donors.get(recipe.base_model)
        try:
            return output_architecture(recipe, base.model_type if base is not None else None)
        except RecipeError:
            return "?"  # the problems list says why

    def _problems(self, recipe: MoeRecipe) -> list[str]:
        """Why a donor did not resolve (the resolver's words), then what mergekit-moe would refuse."""
        failed = [name for name in recipe.referenced_models if name in self._errors]
        problems = [p for p in moe_problems(recipe, self._donors) if not any(p.endswith(f"{n} is not resolved")
                                                                             for n in failed)]
        return [self._errors[name] for name in failed] + problems


def _read_text(path: Path | None) -> str | None:
    """The recipe file's text, to edit in place on save (None: saved as fresh YAML)."""
    try:
        return path.read_text(encoding="utf-8") if path is not None else None
    except (OSError, UnicodeDecodeError):
        return None
