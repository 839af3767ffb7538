"""A mergekit-moe recipe in the designer: written from scratch or opened, estimated and merged.

The panel keeps its own :class:`MoeRecipe` and undo stack (the merge recipe's document holds
stages, not experts); each change (base, gate mode, an expert added, moved, removed, a donor
pick, a prompt edit) is one pure edit of :mod:`merger_gui.core.moe_edits` and one undo step.
Saving edits the loaded text in place (:func:`edit_moe_text`), so the file's comments survive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QPushButton, QVBoxLayout, QWidget

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import DonorError, RecipeError
from merger_gui.core.moe_recipe import MoeRecipe, moe_problems, output_architecture
from merger_gui.core.moe_roundtrip import edit_moe_text
from merger_gui.core.resolve import resolve_donor

from .merge_panel import NOTE_STYLE
from .moe_estimate import MoeEstimateBox
from .moe_experts import ExpertBox, ExpertCards
from .moe_merge import MoeMergeBox
from .moe_settings import MoeSettingsBar

NO_EXPERTS = "No experts yet: add one from your donors (each expert is a dense model's MLPs)."
NO_SHARED = ("None: Mixtral output. One shared expert (always active, gated by its prompts) makes a "
             "Qwen MoE output.")


class _MoeCommand(QUndoCommand):
    def __init__(self, panel: MoePanel, before: MoeRecipe, after: MoeRecipe, text: str) -> None:
        super().__init__(text)
        self._panel, self._before, self._after = panel, before, after

    def redo(self) -> None:
        self._panel._set_recipe(self._after)

    def undo(self) -> None:
        self._panel._set_recipe(self._before)


class MoePanel(QWidget):
    """The MoE recipe's editor; ``recipe_changed`` after every edit, undo and redo."""

    recipe_changed = Signal(object)  # MoeRecipe
    save_requested = Signal()  # the page's Save button: the window saves (and words an error)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self._recipe: MoeRecipe | None = None
        self._donors: dict[str, DonorInfo] = {}
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
        self.settings_bar = MoeSettingsBar()
        self.expert_cards = ExpertCards(False, "Experts")
        self.shared_cards = ExpertCards(True, "Shared experts <span style='color: gray'>(Qwen MoE)</span>")
        self.estimate_box = MoeEstimateBox()
        self.merge_box = MoeMergeBox()
        self.settings_bar.edit_requested.connect(self.apply)
        for cards in (self.expert_cards, self.shared_cards):
            cards.edit_requested.connect(self._apply_to_experts)
            cards.donor_requested.connect(lambda ref, c=cards: self._add_donor(c, ref))

        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.settings_bar)
        layout.addWidget(self.summary)
        layout.addWidget(self.problems)
        layout.addWidget(self.expert_cards)
        layout.addWidget(self.shared_cards)
        layout.addWidget(self.estimate_box)
        layout.addWidget(self.merge_box)
        layout.addStretch(1)

    @property
    def recipe(self) -> MoeRecipe | None:
        return self._recipe

    @property
    def experts(self) -> list[ExpertBox]:
        """The routed experts' cards, in the recipe's order."""
        return self.expert_cards.boxes

    @property
    def is_modified(self) -> bool:
        """Edits not saved yet."""
        return self._recipe is not None and not self.undo_stack.isClean()

    def load(self, recipe: MoeRecipe, donors: Mapping[str, DonorInfo], path: Path | None = None,
             errors: Mapping[str, str] | None = None) -> None:
        """Show ``recipe`` (its donors resolved by name, as far as they are; ``errors`` says why
        the others are not) and keep ``path``'s text for saving (None: a new recipe, saved as
        fresh YAML); clears the undo history."""
        self._donors, self._errors, self.path = dict(donors), errors or {}, path
        self._text = _read_text(path)
        self.undo_stack.clear()
        self._set_recipe(recipe)
        self._show_title()

    def offer_donors(self, donors: Mapping[str, DonorInfo]) -> None:
        """Offer ``donors`` (the designer's) as bases and experts too; the recipe's own stay as resolved."""
        new = {name: info for name, info in donors.items() if name not in self._donors}
        if new:
            self._donors.update(new)
            if self._recipe is not None:
                self._set_recipe(self._recipe)

    def apply(self, edit: Callable[[MoeRecipe], MoeRecipe], text: str) -> None:
        """Apply a pure edit of the MoE recipe as one undo step (none when it changes nothing)."""
        assert self._recipe is not None
        after = edit(self._recipe)
        if after != self._recipe:
            self.undo_stack.push(_MoeCommand(self, self._recipe, after, text))

    def commit_prompts(self) -> None:
        """Prompts typed but not yet committed (the focus still in their box) become their edit."""
        self.expert_cards.commit_prompts()
        self.shared_cards.commit_prompts()

    def save(self, path: Path) -> None:
        """Write the recipe as mergekit-moe YAML, the loaded file's comments and order kept, and mark it saved.

        Raises:
            RecipeError: no base model or no expert yet.
            OSError: the file cannot be written.
        """
        assert self._recipe is not None
        self.commit_prompts()
        text = edit_moe_text(self._recipe, self._text if path == self.path else None)
        temp = path.with_name(f".{path.name}.partial")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)  # never half a recipe
        self.path, self._text = path, text
        self.undo_stack.setClean()
        self._set_recipe(self._recipe)  # the merge box proposes a folder beside the file now
        self._show_title()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.merge_box.runner.shutdown()  # cancels a running merge and waits for its thread
        super().closeEvent(event)

    def _apply_to_experts(self, edit: Callable[[MoeRecipe], MoeRecipe], text: str) -> None:
        """An expert edit; a recipe without a base takes its first expert's donor as the base."""
        def with_base(recipe: MoeRecipe) -> MoeRecipe:
            after = edit(recipe)
            return after if after.base_model or not after.experts else \
                replace(after, base_model=after.experts[0].source_model)

        self.apply(with_base, text)

    def _add_donor(self, cards: ExpertCards, ref: str) -> None:
        """Inspect a folder or profile the user chose for a new expert, then add the expert."""
        if ref not in self._donors:
            try:
                self._donors[ref] = resolve_donor(ref)
            except DonorError as exc:
                QMessageBox.warning(self, "Cannot add the expert", str(exc))
                return
        cards.add(ref)

    def _show_title(self, *_: object) -> None:
        name = self.path.name if self.path else "untitled"
        unsaved = "" if self.undo_stack.isClean() else " — unsaved changes"
        self.title.setText(f"<b>MoE recipe</b> {name}{unsaved}  <span style='color: gray'>(mergekit-moe)</span>")

    def _set_recipe(self, recipe: MoeRecipe) -> None:
        self._recipe = recipe
        shared = f" + {len(recipe.shared_experts)} shared, always active" if recipe.shared_experts else ""
        self.summary.setText(f"{recipe.experts_per_token} of {len(recipe.experts)} experts per token{shared} · "
                             f"output <b>{self._output_architecture(recipe)}</b>")
        problems = self._problems(recipe)
        self.problems.setText("\n".join(f"• {p}" for p in problems))
        self.problems.setVisible(bool(problems))
        names = list(dict.fromkeys(n for n in [*recipe.referenced_models, *self._donors] if n))
        self.settings_bar.show_recipe(recipe, names)
        self.expert_cards.show_experts(recipe.experts, names, NO_EXPERTS)
        self.shared_cards.show_experts(recipe.shared_experts, names, NO_SHARED)
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
