"""The experts of an MoE recipe as cards: donor, prompts, move, remove, and adding one from a donor.

One :class:`ExpertCards` shows one list (the routed ``experts`` or the ``shared_experts``); it
turns each user action into a pure edit from :mod:`merger_gui.core.moe_edits`, emitted as
``edit_requested`` for the page to push as one undo step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from PySide6.QtCore import Signal
from PySide6.QtGui import QFocusEvent, QResizeEvent
from PySide6.QtWidgets import (
    QFileDialog, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QPushButton, QToolButton,
    QVBoxLayout, QWidget,
)

from merger_gui.core.moe_edits import add_expert, move_expert, remove_expert, set_expert_prompts, set_expert_source
from merger_gui.core.moe_recipe import MoeExpert, MoeRecipe
from merger_gui.core.profiles import profile_names
from merger_gui.core.resolve import PROFILE_PREFIX

from .eliding_combo import ElidingComboBox

EXPERT_MIN_WIDTH = 300  # an expert's card; as many columns as fit, at most MAX_COLUMNS
MAX_COLUMNS = 4
PROMPT_HEIGHT = 60  # three lines
Edit = Callable[[MoeRecipe], MoeRecipe]


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


class ExpertBox(QGroupBox):
    """One expert's card: its donor with move and remove buttons, then its positive and negative prompts."""

    def __init__(self) -> None:
        super().__init__()
        self.donor = ElidingComboBox(12)
        self.donor.setToolTip("The dense donor whose MLPs become this expert in every layer")
        self.move_left = _tool_button("←", "Move this expert one place earlier (its router row moves with it)")
        self.move_right = _tool_button("→", "Move this expert one place later")
        self.remove = _tool_button("✕", "Remove this expert")
        self.positive = PromptEdit()
        self.negative = PromptEdit()
        top = QHBoxLayout()
        top.setSpacing(2)
        top.addWidget(self.donor, 1)
        for button in (self.move_left, self.move_right, self.remove):
            top.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setSpacing(3)
        layout.addLayout(top)
        for edit, title, tip in ((self.positive, "Positive prompts", "route tokens like these here"),
                                 (self.negative, "Negative prompts", "route tokens like these elsewhere")):
            edit.setPlaceholderText("one a line")
            edit.setToolTip(f"{title}, one a line: {tip}")
            edit.setFixedHeight(PROMPT_HEIGHT)
            layout.addWidget(QLabel(title))
            layout.addWidget(edit)
        self.setMinimumWidth(EXPERT_MIN_WIDTH - 40)


def _tool_button(text: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setAutoRaise(True)
    return button


class ExpertCards(QWidget):
    """The cards of one expert list with an add button; ``edit_requested(edit, text)`` for each change,
    ``donor_requested(ref)`` when an expert should come from a folder or profile not known yet."""

    edit_requested = Signal(object, str)  # a pure edit of the MoeRecipe, its undo text
    donor_requested = Signal(str)  # a folder or profile:NAME to resolve and add as an expert

    def __init__(self, shared: bool, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.shared = shared
        self.noun = "shared expert" if shared else "expert"
        self.boxes: list[ExpertBox] = []
        self._experts: tuple[MoeExpert, ...] = ()
        self._names: list[str] = []
        self._columns = 0
        self.add_button = QPushButton(f"Add {self.noun}")
        self.add_button.setToolTip(f"Add a {self.noun} from one of your donors, a folder or a shape profile")
        self.add_menu = QMenu(self)
        self.add_menu.aboutToShow.connect(self._fill_add_menu)
        self.add_button.setMenu(self.add_menu)
        self.empty_label = QLabel()
        self.empty_label.setStyleSheet("color: gray")
        self.empty_label.setWordWrap(True)
        self._grid = QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        heading = QLabel(f"<b>{title}</b>")
        heading.setObjectName("sectionTitle")
        top = QHBoxLayout()
        top.addWidget(heading, 1)
        top.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.empty_label)
        layout.addLayout(self._grid)

    def show_experts(self, experts: tuple[MoeExpert, ...], names: Sequence[str], empty_text: str) -> None:
        """Show ``experts`` (a card each), their donor combos offering ``names``; ``empty_text`` when none."""
        before, self._experts, self._names = self._experts, experts, list(names)
        while len(self.boxes) > len(experts):
            self.boxes.pop().deleteLater()
        while len(self.boxes) < len(experts):
            self.boxes.append(self._new_box(len(self.boxes)))
        self._columns = 0
        self._arrange()
        for index, (box, expert) in enumerate(zip(self.boxes, experts)):
            box.setTitle(f"{self.noun.capitalize()} {index + 1}")
            box.donor.blockSignals(True)
            box.donor.clear()
            box.donor.addItems(list(dict.fromkeys([expert.source_model, *names])))
            box.donor.setCurrentText(expert.source_model)
            box.donor.blockSignals(False)
            if index >= len(before) or before[index] != expert:  # else keep what the user is typing there
                box.positive.show_prompts(expert.positive_prompts)
                box.negative.show_prompts(expert.negative_prompts)
            box.move_left.setEnabled(index > 0)
            box.move_right.setEnabled(index < len(experts) - 1)
        self.empty_label.setText(empty_text)
        self.empty_label.setVisible(not experts)

    def commit_prompts(self) -> None:
        """Turn prompts typed but not yet committed (focus still in the box) into their edit."""
        for index in range(len(self.boxes)):
            self._edit_prompts(index)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._arrange()

    def _arrange(self) -> None:
        """Cards side by side, as many columns as the width allows."""
        columns = max(1, min(MAX_COLUMNS, len(self.boxes), self.width() // EXPERT_MIN_WIDTH))
        if columns == self._columns:
            return
        self._columns = columns
        while self._grid.count():
            self._grid.takeAt(0)
        for index, box in enumerate(self.boxes):
            self._grid.addWidget(box, index // columns, index % columns)
        for column in range(MAX_COLUMNS):
            self._grid.setColumnStretch(column, 1 if column < columns else 0)

    def _new_box(self, index: int) -> ExpertBox:
        box = ExpertBox()
        box.donor.activated.connect(partial(self._pick_donor, index))
        box.positive.editingFinished.connect(partial(self._edit_prompts, index))
        box.negative.editingFinished.connect(partial(self._edit_prompts, index))
        box.move_left.clicked.connect(partial(self._move, index, -1))
        box.move_right.clicked.connect(partial(self._move, index, 1))
        box.remove.clicked.connect(partial(self._remove, index))
        return box

    def _emit(self, edit: Edit, text: str) -> None:
        self.edit_requested.emit(edit, text)

    def _pick_donor(self, index: int, _row: int) -> None:
        name, shared = self.boxes[index].donor.currentText(), self.shared
        self._emit(lambda r: set_expert_source(r, index, name, shared=shared), f"{self._label(index)} from {name}")

    def _edit_prompts(self, index: int) -> None:
        if index >= len(self._experts):
            return  # a card being removed loses focus
        box, expert, shared = self.boxes[index], self._experts[index], self.shared
        positive, negative = box.positive.prompts(), box.negative.prompts()
        if (tuple(p for p in positive if p.strip()), tuple(p for p in negative if p.strip())) != \
                (expert.positive_prompts, expert.negative_prompts):
            self._emit(lambda r: set_expert_prompts(r, index, positive, negative, shared=shared),
                       f"Prompts of {self._label(index).lower()}")

    def _move(self, index: int, step: int) -> None:
        self.commit_prompts()
        shared, direction = self.shared, "earlier" if step < 0 else "later"
        self._emit(lambda r: move_expert(r, index, index + step, shared=shared),
                   f"Move {self._label(index).lower()} {direction}")

    def _remove(self, index: int) -> None:
        self.commit_prompts()
        shared = self.shared
        self._emit(lambda r: remove_expert(r, index, shared=shared), f"Remove {self._label(index).lower()}")

    def add(self, name: str) -> None:
        """Add a card for an expert from donor ``name`` (one undo step)."""
        self.commit_prompts()
        shared = self.shared
        self._emit(lambda r: add_expert(r, name, shared=shared), f"Add {self.noun} from {name}")

    def _label(self, index: int) -> str:
        return f"{self.noun.capitalize()} {index + 1}"

    def _fill_add_menu(self) -> None:
        menu = self.add_menu
        menu.clear()
        for name in self._names:
            menu.addAction(name, partial(self.add, name))
        if self._names:
            menu.addSeparator()
        menu.addAction("Local folder…", self._add_folder)
        profiles = menu.addMenu("Shape profile")
        for profile in profile_names():
            profiles.addAction(profile, partial(self.donor_requested.emit, PROFILE_PREFIX + profile))

    def _add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Add a {self.noun} from a model folder")
        if folder:
            self.donor_requested.emit(folder)
