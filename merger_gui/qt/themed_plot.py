"""A pyqtgraph plot that takes the canvas colours of the current theme and follows theme changes."""

from __future__ import annotations

from PySide6.QtCore import QEvent
from PySide6.QtWidgets import QWidget
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from .theme import current_theme


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

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        ready = self.getPlotItem() is not None  # Qt sends one while pyqtgraph is still building it
        if ready and event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.apply_theme()
