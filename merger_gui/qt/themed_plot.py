"""A pyqtgraph plot that takes the canvas colours of the current theme and follows theme changes."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize
from PySide6.QtWidgets import QWidget
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from .theme import current_theme

PREFERRED_HEIGHT = 120  # pyqtgraph's own 480 px hint would push a panel's text out of a laptop window


class ThemedPlotWidget(pg.PlotWidget):
    """``pg.PlotWidget`` drawn in the theme's canvas colours (background, axes, labels)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.apply_theme()

    def apply_theme(self) -> None:
        canvas = current_theme().canvas
        self.setBackground(canvas.background)
        item = self.getPlotItem()
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            axis.setPen(pg.mkPen(canvas.muted_text))
            axis.setTextPen(pg.mkPen(canvas.text))

    def sizeHint(self) -> QSize:
        """As wide as pyqtgraph asks, but only as tall as the minimum: a plot takes the height left over
        (its policy expands), so it never makes a scrolling panel taller than its window."""
        hint = super().sizeHint()
        return QSize(hint.width(), max(self.minimumHeight(), PREFERRED_HEIGHT))

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        ready = self.getPlotItem() is not None  # Qt sends one while pyqtgraph is still building it
        if ready and event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.apply_theme()
