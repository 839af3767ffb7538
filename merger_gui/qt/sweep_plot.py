"""Perplexity and agreement against the swept value, the donors' perplexity as dashed lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget
import pyqtgraph as pg

from .themed_plot import ThemedPlotWidget

COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


class SweepPlot(QWidget):
    """Two stacked plots sharing the x axis: perplexity (top) and agreement with each donor (bottom)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.perplexity_plot = ThemedPlotWidget()
        self.agreement_plot = ThemedPlotWidget()
        self.agreement_plot.setXLink(self.perplexity_plot)
        self.agreement_plot.setYRange(0.0, 1.0)
        for plot, label in ((self.perplexity_plot, "perplexity"), (self.agreement_plot, "agreement")):
            plot.setMinimumHeight(140)
            plot.setMouseEnabled(x=False, y=False)
            plot.setLabel("left", label)
            plot.addLegend(offset=(-10, 10))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.perplexity_plot)
        layout.addWidget(self.agreement_plot)

    def show_results(self, param: str, values: Sequence[float], perplexities: Sequence[float],
                     agreements: Mapping[str, Sequence[float | None]], donors: Mapping[str, float]) -> None:
        """Draw the finished variants (so far) of a sweep of ``param``."""
        self.perplexity_plot.clear()
        self.agreement_plot.clear()
        self.agreement_plot.setLabel("bottom", param)
        self.perplexity_plot.plot(list(values), list(perplexities), pen=pg.mkPen(COLOURS[0], width=2),
                                  symbol="o", symbolBrush=COLOURS[0], name="merge")
        for k, (name, perplexity) in enumerate(donors.items(), start=1):
            colour = COLOURS[k % len(COLOURS)]
            # A flat curve over the swept range, not an InfiniteLine: the view's auto-range includes it.
            span = [min(values), max(values)] if values else []
            self.perplexity_plot.plot(span, [perplexity] * len(span), name=_short(name),
                                      pen=pg.mkPen(colour, style=Qt.PenStyle.DashLine))
            points = [(v, a) for v, a in zip(values, agreements.get(name, ())) if a is not None]
            self.agreement_plot.plot([p[0] for p in points], [p[1] for p in points], pen=pg.mkPen(colour, width=2),
                                     symbol="o", symbolBrush=colour, name=_short(name))

    def point_count(self) -> int:
        """How many values the perplexity curve holds (for tests and status texts)."""
        items = self.perplexity_plot.getPlotItem().listDataItems()
        return len(items[0].getData()[0]) if items and items[0].getData()[0] is not None else 0


def _short(name: str) -> str:
    """A donor's name as a legend shows it: the last part of a path."""
    return name.rstrip("/").rsplit("/", 1)[-1] or name
