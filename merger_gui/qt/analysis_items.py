"""The analysis overlay on the stacks: a per-layer distance strip beside each donor column, and the
seams of the output stack coloured by how big a jump they ask for (from the Analysis tab's result)."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QGraphicsItem, QGraphicsObject, QGraphicsSceneHoverEvent, QStyleOptionGraphicsItem, QWidget,
)
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from merger_gui.core.plan import LayerMap

from .analysis_job import AnalysisResult
from .slice_items import StackGeometry

COLOR_MAP = "viridis"  # the Analysis tab's colours
STRIP_W = 6.0
STRIP_GAP = 2.0  # between a donor column and its strip


def distance_color(value: float, top: float) -> QColor:
    """``value`` on the colour map, scaled so that ``top`` is its brightest end."""
    return QColor(pg.colormap.get(COLOR_MAP).map(min(1.0, value / (top or 1.0)), mode="qcolor"))


class DistanceStripItem(QGraphicsObject):
    """Thin cells beside a donor column: each layer's angular distance (brighter: the layer changes more)."""

    def __init__(self, name: str, distances: Sequence[float], top: float, geometry: StackGeometry) -> None:
        super().__init__()
        self.name, self.distances, self.top, self.geometry = name, list(distances), top, geometry
        self.colors = [distance_color(d, top) for d in self.distances]
        self.setAcceptHoverEvents(True)
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)

    def boundingRect(self) -> QRectF:
        g = self.geometry
        return QRectF(0, g.top, STRIP_W, len(self.distances) * g.cell_h)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        g = self.geometry
        for layer, color in enumerate(self.colors):
            painter.fillRect(QRectF(0, g.y(layer), STRIP_W, g.cell_h), color)

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        layer = int(self.geometry.layer_at(event.pos().y()))
        if 0 <= layer < len(self.distances):
            self.setToolTip(f"{self.name} layer {layer}: distance {self.distances[layer]:.3f}\n"
                            "(how much the layer changes the hidden state)")


def strip_top(result: AnalysisResult) -> float:
    """The brightest distance of every strip: one scale for all donors."""
    return max((d for distances in result.layer_distance.values() for d in distances), default=0.0)


def seam_marks(result: AnalysisResult | None, layer_map: LayerMap | None) -> dict[int, tuple[QColor, str]]:
    """Output layer index → (colour, text) of each seam of ``layer_map`` that ``result`` measured.

    Seams are matched by the layers they join, so a result stays on its seams while slices move."""
    if result is None or layer_map is None or not result.seams:
        return {}
    measured = {(s.seam.source, s.seam.target): s for s in result.seams}
    top = max(s.distance for s in result.seams)
    marks = {}
    for index in layer_map.seams:
        before, after = layer_map.layers[index - 1].sources[0], layer_map.layers[index].sources[0]
        if (seam := measured.get((before, after))) is not None:
            marks[index] = (distance_color(seam.distance, top),
                            f"seam {before.model} {before.layer} → {after.model} {after.layer}: "
                            f"distance {seam.distance:.3f}, closest input: {after.model} {seam.best_to_layer}")
    return marks
