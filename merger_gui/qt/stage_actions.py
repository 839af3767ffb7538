"""Add / remove / rename stage, as shared ``QAction`` s (Edit menu and the stage tabs' menu)."""

from __future__ import annotations

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QInputDialog, QWidget

from merger_gui.core import stage_edits

from .document import RecipeDocument


class StageActions(QObject):
    """Stage list edits of the document; each is one undo step."""

    def __init__(self, document: RecipeDocument, dialog_parent: QWidget | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.document, self.dialog_parent = document, dialog_parent
        self.add = QAction("Add stage", self)
        self.add.setToolTip("Add an empty stage after the last; earlier stages become its donors")
        self.add.triggered.connect(self.add_stage)
        self.remove = QAction("Remove stage", self)
        self.remove.triggered.connect(lambda: self.remove_stage(self.document.current_stage))
        self.rename = QAction("Rename stage…", self)
        self.rename.triggered.connect(self._ask_rename)
        self.actions = (self.add, self.rename, self.remove)
        document.recipe_changed.connect(self.update_enabled)
        self.update_enabled()

    def update_enabled(self, *_: object) -> None:
        self.remove.setEnabled(self.document.recipe.is_multi_stage)

    def add_stage(self) -> None:
        """Append an empty stage and show it."""
        after = stage_edits.add_stage(self.document.recipe)
        self.document.apply(after, f"Add stage {after.stages[-1].name}")
        self.document.set_current_stage(len(after.stages) - 1)

    def remove_stage(self, index: int) -> None:
        name = self.document.recipe.stages[index].name or f"{index + 1}"
        self.document.apply(lambda r: stage_edits.remove_stage(r, index), f"Remove stage {name}")

    def rename_stage(self, index: int, name: str) -> None:
        """Rename stage ``index`` (and later stages' references to it)."""
        self.document.apply(lambda r: stage_edits.rename_stage(r, index, name), f"Rename stage to {name.strip()}")

    def _ask_rename(self) -> None:
        index = self.document.current_stage
        name, ok = QInputDialog.getText(self.dialog_parent, "Rename stage", "Stage name:",
                                        text=self.document.stage.name or "")
        if ok:
            self.rename_stage(index, name)
