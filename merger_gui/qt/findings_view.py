"""Validation findings of the open recipe, listed live (errors first), with their quick fixes.

Clicking a finding selects what it is about; a finding that names its fix gets a button
below it that does the fix as one undo step.
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QHBoxLayout, QHeaderView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QToolButton, QTreeWidget,
    QTreeWidgetItem, QWidget,
)

from merger_gui.core.quick_fixes import Fix, apply_fix
from merger_gui.core.validation import Finding

from .document import Companion, RecipeDocument
from .donor_registry import DonorRegistry
from .live_plan import LivePlan

FINDING_ROLE = Qt.ItemDataRole.UserRole + 1
FIX_ROLE = Qt.ItemDataRole.UserRole + 2
WHERE_MIN_W, WHERE_MAX_W = 70, 150  # the "Where" column: as wide as its text, within these
MESSAGE_MIN_CHARS = 34  # narrower than this many average characters, a message would wrap word by word


def apply_quick_fix(document: RecipeDocument, fix: Fix, registry: DonorRegistry | None = None) -> None:
    """Do ``fix`` as one undo step.

    Pointing a misnamed stage reference at its stage also forgets the failed donor lookup
    of the old name (and undo brings it back), so it leaves the donor list with the fix.
    """
    companion = None
    if fix.edit == "rename-reference" and registry is not None:
        old = str(fix.args[0])
        saved = registry.entry(old)
        companion = Companion(redo=lambda: registry.remove(old), undo=lambda: registry.restore(old, saved))
    document.apply(lambda recipe: apply_fix(recipe, fix), f"Fix: {fix.label}", companion)


class _WrappingDelegate(QStyledItemDelegate):
    """Row heights that fit the wrapped message at the column's current width."""

    def __init__(self, view: FindingsView) -> None:
        super().__init__(view)
        self._view = view

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        hint = super().sizeHint(option, index)
        if index.data(FIX_ROLE) is not None:
            return hint  # the fix button's row
        width = self._view.text_width(index.column())
        text = str(index.data() or "")
        rect = option.fontMetrics.boundingRect(QRect(0, 0, width, 10_000), Qt.TextFlag.TextWordWrap, text)
        return QSize(hint.width(), max(hint.height(), rect.height() + 6))


class FindingsView(QTreeWidget):
    """One row per finding (severity icon, message, location), errors before warnings.

    When the view is too narrow for the message and the location side by side, the
    location goes under the message, so sentences keep a readable width.
    """

    counts_changed = Signal(int, int)  # errors, warnings

    def __init__(self, document: RecipeDocument, live_plan: LivePlan, registry: DonorRegistry | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.registry = registry
        self.setColumnCount(2)
        self.setHeaderLabels(["Problem", "Where"])
        self.setRootIsDecorated(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(True)  # messages say how to fix things: show them whole
        self.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setItemDelegate(_WrappingDelegate(self))
        self.setMinimumWidth(self.message_min_width())
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(1, WHERE_MIN_W)
        self.setHeaderHidden(True)  # icon, message and place speak for themselves; saves a row
        header.sectionResized.connect(lambda *_: self.scheduleDelayedItemsLayout())  # re-wrap
        style = self.style()
        self._icons = {
            "error": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical),
            "warning": style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning),
            "ok": style.standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton),
        }
        self.findings: list[Finding] = []
        self.fix_buttons: list[QToolButton] = []
        self._narrow: bool | None = None
        self.itemClicked.connect(self._on_clicked)
        self.itemActivated.connect(self._on_clicked)
        live_plan.findings_changed.connect(self.set_findings)
        self.set_findings(live_plan.findings)

    def message_min_width(self) -> int:
        return self.fontMetrics().averageCharWidth() * MESSAGE_MIN_CHARS + 40

    def text_width(self, column: int) -> int:
        """The width a column's text wraps at (past the icon in the first)."""
        return max(40, self.header().sectionSize(column) - (28 if column == 0 else 8))

    def set_findings(self, findings: list[Finding]) -> None:
        self.findings = sorted(findings, key=lambda f: not f.is_error)  # stable: errors first, in recipe order
        self.clear()
        self.fix_buttons = []
        for finding in self.findings:
            item = QTreeWidgetItem([finding.message, finding.location])
            item.setIcon(0, self._icons[finding.severity])
            tip = f"{finding.severity}: {finding.message}\n[{finding.code}]"
            item.setToolTip(0, tip + (f"\nQuick fix: {finding.fix.label}" if finding.fix else ""))
            item.setToolTip(1, "Click to select it in the designer")
            item.setData(0, FINDING_ROLE, finding)
            self.addTopLevelItem(item)
            if finding.fix is not None:
                self._add_fix_row(item, finding.fix)
        if not self.findings:
            item = QTreeWidgetItem(["No problems found", ""])
            item.setIcon(0, self._icons["ok"])
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.addTopLevelItem(item)
        self.expandAll()
        self._narrow = None
        self._fit_columns()
        errors = sum(f.is_error for f in self.findings)
        self.counts_changed.emit(errors, len(self.findings) - errors)

    def _add_fix_row(self, parent: QTreeWidgetItem, fix: Fix) -> None:
        row = QTreeWidgetItem(parent)
        row.setData(0, FIX_ROLE, fix)
        row.setFirstColumnSpanned(True)
        row.setFlags(Qt.ItemFlag.ItemIsEnabled)
        button = QToolButton(self)
        button.setProperty("fix_label", fix.label)
        button.setText(f"Fix: {fix.label}")
        button.setToolTip(f"{fix.label} (one undo step)")
        button.setAutoRaise(True)
        button.clicked.connect(lambda _=False, f=fix: self.apply_fix(f))
        holder = QWidget(self)  # keeps the button at its own width, on the left
        layout = QHBoxLayout(holder)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(button)
        layout.addStretch(1)
        self.setItemWidget(row, 0, holder)
        self.fix_buttons.append(button)

    def apply_fix(self, fix: Fix) -> None:
        """Do a finding's quick fix as one undo step."""
        apply_quick_fix(self.document, fix, self.registry)

    def _fit_columns(self) -> None:
        """Location beside the message when both fit, under it otherwise."""
        places = [self.fontMetrics().horizontalAdvance(f.location) + 16 for f in self.findings]
        where = max(WHERE_MIN_W, min(WHERE_MAX_W, max(places, default=0)))
        narrow = self.viewport().width() < self.message_min_width() + where
        if narrow != self._narrow:
            self._narrow = narrow
            self.setColumnHidden(1, narrow)
            for i in range(self.topLevelItemCount()):
                item = self.topLevelItem(i)
                assert item is not None  # i < topLevelItemCount()
                finding = item.data(0, FINDING_ROLE)
                if isinstance(finding, Finding):
                    item.setText(0, f"{finding.message}\n› {finding.location}" if narrow else finding.message)
        if not narrow:
            self.header().resizeSection(1, where)
        room = self.viewport().width() - self.indentation() - 12
        for button in self.fix_buttons:  # a long model name elides, the button stays inside the view
            label = f"Fix: {button.property('fix_label')}"
            button.setText(button.fontMetrics().elidedText(label, Qt.TextElideMode.ElideMiddle, room))
        self.scheduleDelayedItemsLayout()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_columns()  # wrapped rows change height with the width

    def _on_clicked(self, item: QTreeWidgetItem, column: int = 0) -> None:
        finding = item.data(0, FINDING_ROLE)
        if not isinstance(finding, Finding):
            return  # "no problems", or a fix row (its button does the fix)
        if finding.stage is not None:
            self.document.set_current_stage(finding.stage)
        if finding.slice is not None and (finding.stage is None or finding.stage == self.document.current_stage):
            self.document.select_slice(finding.slice)
