"""The rule list of the curve editor: a stage's filter rules in match order, with their buttons.

It shows rules and asks for edits by signals; the editor turns each request into a pure edit.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QSignalBlocker, QSize, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMenu, QPushButton, QStyle, QToolButton, QVBoxLayout, QWidget,
)

from merger_gui.core import parameter_edits as edits
from merger_gui.core.recipe import FilterRule


RULES_MIN_H, RULES_MAX_H = 60, 120  # the list is as tall as its rows between these


def rule_label(rule: FilterRule) -> str:
    return "fallback (every tensor)" if rule.filter in (None, "*") else rule.filter


class RuleList(QWidget):
    """A stage's rules for one parameter (first match wins), and Add / Remove / Up / Down / Shape.

    Signals:
        rule_selected(int): the current row changed.
        add_requested(): "Add rule…" was clicked.
        remove_requested(int), move_requested(int, int): remove a rule; move it by a step.
        renamed(int, object): a rule's filter was edited in place (None: the fallback).
        menu_requested(int, QPoint): a context menu for a row (-1: no row) at a global position.
        shape_menu_requested(QMenu, int): fill the Shape menu for a row before it shows.
    """

    rule_selected = Signal(int)
    add_requested = Signal()
    remove_requested = Signal(int)
    move_requested = Signal(int, int)
    renamed = Signal(int, object)
    menu_requested = Signal(int, QPoint)
    shape_menu_requested = Signal(QMenu, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemChanged.connect(self._item_renamed)
        self.list.currentRowChanged.connect(self._row_changed)
        self.list.setIconSize(QSize(14, 14))  # a warning icon keeps its row as tall as the others
        self.list.setMinimumHeight(RULES_MIN_H)
        self.list.setMaximumHeight(RULES_MAX_H)

        self.add_button = QPushButton("Add rule…")
        self.add_button.clicked.connect(self.add_requested)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self.current_row()))
        self.up_button = QPushButton("Up")
        self.up_button.clicked.connect(lambda: self.move_requested.emit(self.current_row(), -1))
        self.down_button = QPushButton("Down")
        self.down_button.clicked.connect(lambda: self.move_requested.emit(self.current_row(), 1))
        for button in (self.up_button, self.down_button):
            button.setMaximumWidth(56)
        self.shape_button = QToolButton()
        self.shape_button.setText("Shape")
        self.shape_button.setToolTip("Presets, invert, mirror, copy and your own shapes for the selected rule")
        self.shape_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.shape_menu = QMenu(self.shape_button)
        self.shape_menu.aboutToShow.connect(
            lambda: self.shape_menu_requested.emit(self.shape_menu, self.current_row()))
        self.shape_button.setMenu(self.shape_menu)

        buttons = QHBoxLayout()
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(button)
        buttons.addWidget(self.shape_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Rules</b> (first match wins)"))
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        self._can_add = False

    def current_row(self) -> int:
        return self.list.currentRow()

    def set_current_row(self, row: int) -> None:
        if self.list.currentRow() != row:
            self.list.setCurrentRow(row)

    def fill(self, rules: tuple[FilterRule, ...], colours: list[str], warnings: dict[int, str],
             can_add: bool) -> None:
        """Show ``rules`` (keeping the current row where it still exists), coloured as drawn."""
        row = self.list.currentRow()
        warning_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        with QSignalBlocker(self.list):
            self.list.clear()
            for r, rule in enumerate(rules):
                item = QListWidgetItem(rule_label(rule))
                item.setData(Qt.ItemDataRole.UserRole, rule.filter or "")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                item.setForeground(QColor(colours[r]))
                values = ", ".join(f"{v:g}" for v in edits.points(rule.value))
                tip = f"value: [{values}]" if isinstance(rule.value, tuple) else f"value: {values}"
                if r in warnings:
                    item.setIcon(warning_icon)
                    tip = f"{warnings[r]}\n{tip}"
                item.setToolTip(tip)
                self.list.addItem(item)
            if rules:
                self.list.setCurrentRow(min(max(row, 0), len(rules) - 1))
        rows = sum(self.list.sizeHintForRow(r) for r in range(self.list.count()))
        self.list.setMaximumHeight(max(RULES_MIN_H, min(RULES_MAX_H, rows + 2 * self.list.frameWidth())))
        self._can_add = can_add
        self._update_buttons()

    def _row_changed(self, row: int) -> None:
        self._update_buttons()
        self.rule_selected.emit(row)

    def _update_buttons(self) -> None:
        row, count = self.list.currentRow(), self.list.count()
        self.add_button.setEnabled(self._can_add)
        self.remove_button.setEnabled(0 <= row < count)
        self.up_button.setEnabled(0 < row < count)
        self.down_button.setEnabled(0 <= row < count - 1)
        self.shape_button.setEnabled(0 <= row < count)

    def _item_renamed(self, item: QListWidgetItem) -> None:
        text = item.text().strip()
        self.renamed.emit(self.list.row(item), None if not text or text.startswith("fallback") else text)

    def _context_menu(self, pos: QPoint) -> None:
        self.menu_requested.emit(self.list.indexAt(pos).row(), self.list.viewport().mapToGlobal(pos))
