"""A mergekit-moe recipe in the designer: base, gate mode, experts and their prompts, total/active parameters.

The panel keeps its own :class:`MoeRecipe` and undo stack (the merge recipe's document holds
stages, not experts); each donor pick or prompt edit is one pure edit and one undo step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QFocusEvent, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget,
)

from merger_gui.core.donor import DonorInfo
from merger_gui.core.estimator import estimate_moe
from merger_gui.core.moe_recipe import MoeRecipe, dump_moe, moe_problems, set_expert_prompts, set_expert_source
from merger_gui.core.units import format_size


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
    """One expert: its donor and its positive / negative prompts."""

    def __init__(self, index: int) -> None:
        super().__init__(f"Expert {index + 1}")
        self.donor = QComboBox()
        self.donor.setToolTip("The dense donor whose MLPs become this expert in every layer")
        self.positive = PromptEdit()
        self.negative = PromptEdit()
        for edit, tip in ((self.positive, "positive"), (self.negative, "negative")):
            edit.setPlaceholderText(f"{tip} prompts, one a line")
            edit.setMaximumHeight(80)
        form = QFormLayout(self)
        form.addRow("Donor", self.donor)
        form.addRow("Positive prompts", self.positive)
        form.addRow("Negative prompts", self.negative)


class MoePanel(QWidget):
    """The MoE recipe's editor; ``recipe_changed`` after every edit, undo and redo."""

    recipe_changed = Signal(object)  # MoeRecipe

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self._recipe: MoeRecipe | None = None
        self._donors: Mapping[str, DonorInfo] = {}
        self.path: Path | None = None
        self.summary = QLabel()
        self.parameters = QLabel()
        self.problems = QLabel()
        self.problems.setWordWrap(True)
        self.save_button = QPushButton("Save MoE recipe")
        self.save_button.clicked.connect(lambda: self.path is not None and self.save(self.path))
        self.experts: list[ExpertBox] = []
        self._experts_layout = QVBoxLayout()
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.parameters)
        layout.addWidget(self.problems)
        layout.addLayout(self._experts_layout)
        layout.addStretch(1)

    @property
    def recipe(self) -> MoeRecipe | None:
        return self._recipe

    def load(self, recipe: MoeRecipe, donors: Mapping[str, DonorInfo], path: Path | None = None) -> None:
        """Show ``recipe`` (its donors resolved by name, as far as they are); clears the undo history."""
        self._donors, self.path = donors, path
        self.undo_stack.clear()
        for box in self.experts:
            box.deleteLater()
        self.experts = [self._expert_box(i) for i in range(len(recipe.experts))]
        self._set_recipe(recipe)

    def apply(self, edit: Callable[[MoeRecipe], MoeRecipe], text: str) -> None:
        """Apply a pure edit of the MoE recipe as one undo step (none when it changes nothing)."""
        assert self._recipe is not None
        after = edit(self._recipe)
        if after != self._recipe:
            self.undo_stack.push(_MoeCommand(self, self._recipe, after, text))

    def save(self, path: Path) -> None:
        """Write the recipe as mergekit-moe YAML and mark it saved."""
        assert self._recipe is not None
        temp = path.with_name(f".{path.name}.partial")
        temp.write_text(dump_moe(self._recipe), encoding="utf-8")
        os.replace(temp, path)  # never half a recipe
        self.path = path
        self.undo_stack.setClean()

    def _expert_box(self, index: int) -> ExpertBox:
        box = ExpertBox(index)
        box.donor.activated.connect(partial(self._pick_donor, index))
        box.positive.editingFinished.connect(partial(self._edit_prompts, index))
        box.negative.editingFinished.connect(partial(self._edit_prompts, index))
        self._experts_layout.addWidget(box)
        return box

    def _pick_donor(self, index: int, _row: int) -> None:
        name = self.experts[index].donor.currentText()
        self.apply(lambda r: set_expert_source(r, index, name), f"Expert {index + 1} from {name}")

    def _edit_prompts(self, index: int) -> None:
        box = self.experts[index]
        self.apply(lambda r: set_expert_prompts(r, index, box.positive.prompts(), box.negative.prompts()),
                   f"Prompts of expert {index + 1}")

    def _set_recipe(self, recipe: MoeRecipe) -> None:
        self._recipe = recipe
        self.summary.setText(f"<b>MoE</b> (mergekit-moe, Mixtral output) — base <b>{recipe.base_model}</b>, "
                             f"gate_mode {recipe.gate_mode}, {recipe.experts_per_token} of "
                             f"{len(recipe.experts)} experts per token")
        self.parameters.setText(self._parameters_text(recipe))
        self.problems.setText("\n".join(moe_problems(recipe, self._donors if self._complete(recipe) else None)))
        names = list(dict.fromkeys([*recipe.referenced_models, *self._donors]))
        for box, expert in zip(self.experts, recipe.experts):
            box.donor.blockSignals(True)
            box.donor.clear()
            box.donor.addItems(names)
            box.donor.setCurrentText(expert.source_model)
            box.donor.blockSignals(False)
            box.positive.show_prompts(expert.positive_prompts)
            box.negative.show_prompts(expert.negative_prompts)
        self.recipe_changed.emit(recipe)

    def _complete(self, recipe: MoeRecipe) -> bool:
        return all(name in self._donors for name in recipe.referenced_models)

    def _parameters_text(self, recipe: MoeRecipe) -> str:
        base = self._donors.get(recipe.base_model)
        if base is None:
            return "Parameters: the base model is not resolved"
        moe = estimate_moe(recipe, base)
        return (f"Parameters: {moe.total_params:,} total, {moe.active_params:,} active per token; "
                f"GPU memory {format_size(moe.estimate.total_bytes, 2)} at {moe.estimate.options.context:,} "
                f"tokens (KV cache {format_size(moe.estimate.kv_cache_bytes, 2)})")
