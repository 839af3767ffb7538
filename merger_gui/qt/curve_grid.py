"""The per-layer grid beside the curve plot: rows are a parameter's rules, columns the output
layers, cells the value the merge applies there (:func:`merger_gui.core.curve_rows.rule_rows`).

Typing or pasting (tab or comma separated, a whole spreadsheet row or block) edits a row; the
rows are written back as the shortest exact gradients, all pasted rows as one undo step. A row
the recipe cannot give is explained under the grid instead of being written differently.
"""

from __future__ import annotations

import math
import re

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSignalBlocker, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QKeySequence, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from merger_gui.core.curve_rows import RowError, RuleRow, rule_rows, set_rule_row
from merger_gui.core.curves import CurveTarget, NamesByLayer
from merger_gui.core.errors import UserError
from merger_gui.core.parameter_edits import get_rules
from merger_gui.core.plan import OutputLayer
from merger_gui.core.recipe import Stage

from .document import RecipeDocument

CELL_WIDTH = 56  # "0.7393" unelided
SEAM_ROLE = Qt.ItemDataRole.UserRole + 1  # a cell that starts a slice


def parse_cells(text: str) -> list[list[float | None]]:
    """Rows of numbers from pasted text: tab separated (a spreadsheet), else commas,
    semicolons or spaces; an empty cell is None (kept as is).

    Raises:
        UserError: a cell is not a number.
    """
    rows = []
    for line in text.strip("\r\n").splitlines():
        parts = line.split("\t") if "\t" in line else re.split(r"[,;]\s*|\s+", line.strip())
        row: list[float | None] = []
        for part in parts:
            part = part.strip()
            try:
                row.append(float(part) if part else None)
            except ValueError:
                raise UserError(f"not a number: {part!r}") from None
        rows.append(row)
    return rows


def _format(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}".rstrip("0").rstrip(".")


class _SeamDelegate(QStyledItemDelegate):
    """Draws a thick line left of the first layer of every slice (after the first)."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        super().paint(painter, option, index)
        if index.data(SEAM_ROLE):
            painter.save()
            painter.setPen(QPen(option.palette.text().color(), 3))
            rect = option.rect
            painter.drawLine(rect.topLeft(), rect.bottomLeft())
            painter.restore()


class CurveGrid(QWidget):
    """Rows of a curve parameter's rules over the output layers, editable where the rule
    gives the value; :meth:`show_rows` fills it, edits go through ``document``."""

    sigRuleSelected = Signal(int)

    def __init__(self, document: RecipeDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.rows: tuple[RuleRow, ...] = ()
        self._context: tuple[Stage, CurveTarget, tuple[OutputLayer, ...], NamesByLayer] | None = None
        self.table = QTableWidget()
        self.table.setItemDelegate(_SeamDelegate(self.table))
        self.table.horizontalHeader().setDefaultSectionSize(CELL_WIDTH)
        self.table.horizontalHeader().setMinimumSectionSize(CELL_WIDTH)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ContiguousSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed
                                   | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.table.itemChanged.connect(self._cell_edited)
        self.table.currentCellChanged.connect(self._current_changed)
        self.table.installEventFilter(self)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setObjectName("curveGridMessage")
        self.message.setStyleSheet("color: #d0473a")
        self.message.setVisible(False)
        layout = self._layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message)

    # --- filling -----------------------------------------------------------------------------

    def show_rows(self, stage: Stage, target: CurveTarget, labels: list[str], colours: list[str],
                  layers: tuple[OutputLayer, ...], names: NamesByLayer) -> None:
        """Show the rows of ``target``'s rules (``labels``, ``colours``) over ``layers``."""
        rules_count = len(labels)
        self._context = (stage, target, layers, names)
        self.rows = rule_rows(stage, target, get_rules(stage, target.location, target.name), layers, names)
        muted = self.palette().placeholderText().color()
        with QSignalBlocker(self.table):
            current = self.table.currentRow()
            self.table.clear()
            self.table.setRowCount(rules_count)
            self.table.setColumnCount(len(layers))
            self.table.setHorizontalHeaderLabels([str(layer.index) for layer in layers])
            for c, layer in enumerate(layers):
                header = self.table.horizontalHeaderItem(c)
                assert header is not None  # the labels above made it
                header.setToolTip(f"output layer {layer.index} · slice {layer.slice_index + 1}, "
                                  f"layer {layer.position + 1} of {layer.slice_length}")
            for r, row in enumerate(self.rows):
                warn = " ⚠" if row.note else ""
                head = QTableWidgetItem(labels[r] + warn)
                head.setForeground(QColor(colours[r]))
                head.setToolTip(row.note or labels[r])
                self.table.setVerticalHeaderItem(r, head)
                for c, (layer, cell) in enumerate(zip(layers, row.cells)):
                    item = QTableWidgetItem(_format(cell.value))
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    item.setData(SEAM_ROLE, layer.position == 0 and c > 0)
                    if layer.slice_index % 2:  # every other slice tinted, so slices read at a glance
                        item.setBackground(QBrush(QColor(128, 128, 128, 28)))
                    if not cell.editable:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                        item.setForeground(muted)
                        item.setToolTip(f"from {cell.source}: edit it there" if cell.source else
                                        "no tensor of this layer takes this rule")
                    else:
                        item.setToolTip(f"layer {layer.index}: {cell.value:g} from {cell.source}")
                    self.table.setItem(r, c, item)
            if 0 <= current < rules_count:
                self.table.setCurrentCell(current, max(0, self.table.currentColumn()))

    def rows_height(self) -> int:
        """The height that shows every row: the header, the rows, the horizontal scroll bar when the
        layers overflow the width, and the message under the table when there is one."""
        table, header = self.table, self.table.horizontalHeader()
        frame = 2 * table.frameWidth()
        height = frame + header.sizeHint().height() + table.verticalHeader().length()
        if table.verticalHeader().sizeHint().width() + header.length() + frame > table.width():
            height += table.horizontalScrollBar().sizeHint().height()
        if not self.message.isHidden():
            height += self._layout.spacing() + self.message.heightForWidth(max(1, self.width()))
        return height

    def clear_rows(self) -> None:
        self._context = None
        self.rows = ()
        with QSignalBlocker(self.table):
            self.table.clear()
            self.table.setRowCount(0)
            self.table.setColumnCount(0)

    def select_rule(self, rule: int) -> None:
        """Make ``rule`` the current row (without emitting ``sigRuleSelected``)."""
        if 0 <= rule < self.table.rowCount() and rule != self.table.currentRow():
            with QSignalBlocker(self.table):
                self.table.setCurrentCell(rule, max(0, self.table.currentColumn()))
            self.table.viewport().update()

    # --- editing -----------------------------------------------------------------------------

    def set_rows(self, values: dict[int, list[float | None]]) -> bool:
        """Give each rule of ``values`` its per-layer values (None: keep), as one undo step;
        False (and the reason under the grid) when the recipe cannot give them."""
        if self._context is None:
            return False
        stage, target, layers, names = self._context
        try:
            new = self.document.stage
            for rule, row in sorted(values.items()):
                new = set_rule_row(new, target, layers, names, rule, row)
        except RowError as exc:
            self._say(f"{target.name}: {exc}")
            self.show_rows(stage, target, *self._labels(), layers, names)  # back to the values in effect
            return False
        self._say("")
        if new == self.document.stage:
            self._restore()  # the same values: nothing to undo, the cells show them again
            return True
        count = len(values)
        self.document.apply_to_stage(lambda _: new, f"Set {target.name} per layer" +
                                     (f" ({count} rules)" if count > 1 else ""))
        return True

    def paste_text(self, text: str, row: int | None = None, column: int | None = None) -> bool:
        """Paste ``text`` (rows of numbers) with its first cell at (``row``, ``column``),
        the current cell by default; a row longer than the grid is refused."""
        try:
            block = parse_cells(text)
        except UserError as exc:
            self._say(str(exc))
            return False
        row = max(0, self.table.currentRow()) if row is None else row
        column = max(0, self.table.currentColumn()) if column is None else column
        if row + len(block) > self.table.rowCount() or any(column + len(b) > self.table.columnCount() for b in block):
            self._say(f"the pasted block ({len(block)} × {max(map(len, block))}) does not fit from layer "
                      f"{column}: {self.table.columnCount()} layers, {self.table.rowCount()} rules")
            return False
        values = {}
        for r, cells in enumerate(block):
            full: list[float | None] = [None] * self.table.columnCount()
            full[column:column + len(cells)] = cells
            values[row + r] = full
        return self.set_rows(values)

    def copy_text(self) -> str:
        """The selected cells as tab-separated rows (what a spreadsheet pastes)."""
        ranges = self.table.selectedRanges()
        if not ranges:
            return ""
        sel = ranges[0]
        return "\n".join("\t".join(self._text(r, c) for c in range(sel.leftColumn(), sel.rightColumn() + 1))
                         for r in range(sel.topRow(), sel.bottomRow() + 1))

    def _text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text() if item is not None else ""

    def eventFilter(self, watched, event) -> bool:
        if watched is self.table and event.type() == event.Type.KeyPress:
            if event.matches(QKeySequence.StandardKey.Paste):
                self.paste_text(QGuiApplication.clipboard().text())
                return True
            if event.matches(QKeySequence.StandardKey.Copy):
                QGuiApplication.clipboard().setText(self.copy_text())
                return True
        return super().eventFilter(watched, event)

    def _cell_edited(self, item: QTableWidgetItem) -> None:
        text = item.text().strip()
        try:
            cells = parse_cells(text) if text else [[None]]
        except UserError as exc:
            self._say(str(exc))
            cells = [[None]]
        value = cells[0][0] if cells and cells[0] else None
        row: list[float | None] = [None] * self.table.columnCount()
        row[item.column()] = value
        if value is None or not self.set_rows({item.row(): row}):
            self._restore()

    def _restore(self) -> None:
        if self._context is not None:
            stage, target, layers, names = self._context
            self.show_rows(stage, target, *self._labels(), layers, names)

    def _labels(self) -> tuple[list[str], list[str]]:
        heads = [self.table.verticalHeaderItem(r) for r in range(self.table.rowCount())]
        return ([h.text().removesuffix(" ⚠") for h in heads],
                [h.foreground().color().name() for h in heads])

    def _current_changed(self, row: int, *_: int) -> None:
        if row >= 0:
            self.sigRuleSelected.emit(row)

    def _say(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
