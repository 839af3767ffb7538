"""Validation findings of the open recipe, listed live; clicking one selects what it is about."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QHeaderView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QTreeWidget, QTreeWidgetItem, QWidget,
)

from merger_gui.core.validation import Finding

from .document import RecipeDocument
from .live_plan import LivePlan

FINDING_ROLE = Qt.ItemDataRole.UserRole + 1
WHERE_MIN_W, WHERE_MAX_W = 70, 140  # the "Where" column: as wide as its text, within these


class _WrappingDelegate(QStyledItemDelegate):
    """Row heights that fit the wrapped message at the column's current width."""

    def __init__(self, view: QTreeWidget) -> None:
        super().__init__(view)
        self._view = view

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        hint = super().sizeHint(option, index)
        width = self._view.header().sectionSize(index.column()) - (28 if index.column() == 0 else 8)
        text = str(index.data() or "")
        rect = option.fontMetrics.boundingRect(QRect(0, 0, max(40, width), 10_000), Qt.TextFlag.TextWordWrap, text)
        return QSize(hint.width(), max(hint.height(), rect.height() + 6))


class FindingsView(QTreeWidget):
    """One row per finding: severity icon, message, location."""

    counts_changed = Signal(int, int)  # errors, warnings

    def __init__(self, document: RecipeDocument, live_plan: LivePlan, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.setColumnCount(2)
        self.setHeaderLabels(["Problem", "Where"])
        self.setRootIsDecorated(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(True)  # messages say how to fix things: show them whole
        self.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.setItemDelegate(_WrappingDelegate(self))
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
        self.itemClicked.connect(self._on_clicked)
        self.itemActivated.connect(self._on_clicked)
        live_plan.findings_changed.connect(self.set_findings)
        self.set_findings(live_plan.findings)

    def set_findings(self, findings: list[Finding]) -> None:
        self.findings = list(findings)
        self.clear()
        for finding in self.findings:
            item = QTreeWidgetItem([finding.message, finding.location])
            item.setIcon(0, self._icons[finding.severity])
            item.setToolTip(0, f"{finding.severity}: {finding.message}\n[{finding.code}]")
            item.setToolTip(1, "Click to select it in the designer")
            item.setData(0, FINDING_ROLE, finding)
            self.addTopLevelItem(item)
        if not self.findings:
            item = QTreeWidgetItem(["No problems found", ""])
            item.setIcon(0, self._icons["ok"])
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.addTopLevelItem(item)
        places = [self.fontMetrics().horizontalAdvance(f.location) + 16 for f in self.findings]
        self.header().resizeSection(1, max(WHERE_MIN_W, min(WHERE_MAX_W, max(places, default=0))))
        errors = sum(f.is_error for f in self.findings)
        self.counts_changed.emit(errors, len(self.findings) - errors)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.scheduleDelayedItemsLayout()  # wrapped rows change height with the width

    def _on_clicked(self, item: QTreeWidgetItem, column: int = 0) -> None:
        finding = item.data(0, FINDING_ROLE)
        if not isinstance(finding, Finding):
            return
        if finding.stage is not None:
            self.document.set_current_stage(finding.stage)
        if finding.slice is not None and (finding.stage is None or finding.stage == self.document.current_stage):
            self.document.select_slice(finding.slice)
