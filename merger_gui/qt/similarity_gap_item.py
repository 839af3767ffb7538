"""The weight similarity of two donors drawn in the gap between their columns in the designer.

Row i sits beside the left donor's layer i; across the heatmap's width run the right donor's layers
(several to a pixel column when they outnumber its pixels: the brightest of them is drawn), in the
Analysis tab's colours, and a tick marks the right donor's layer most similar to layer i. While it is
shown the gap right of the left donor widens to hold it (an explicit action, like a zoom: edits do
not change it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PySide6.QtCore import QLineF, QRectF
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import (
    QGraphicsItem, QGraphicsObject, QGraphicsSceneHoverEvent, QStyleOptionGraphicsItem, QWidget,
)
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from .analysis_items import COLOR_MAP, STRIP_GAP, STRIP_W
from .analysis_job import AnalysisResult
from .slice_items import DonorColumnItem, StackGeometry

GAP_X = STRIP_GAP + STRIP_W + 4.0  # from the left column's edge: after its distance strip, apart from it
PIXELS_PER_LAYER = 4.0  # across the heatmap, for each of the right donor's layers…
MIN_WIDTH, MAX_WIDTH = 40.0, 160.0  # …within these bounds
AFTER = 8.0  # between the heatmap and the next column


def heatmap_width(right_layers: int) -> float:
    """How wide the heatmap is drawn for a right donor of ``right_layers`` layers."""
    return min(MAX_WIDTH, max(MIN_WIDTH, PIXELS_PER_LAYER * right_layers))


def widened_gaps(result: AnalysisResult | None, names: Sequence[str],
                 layers: Mapping[str, int]) -> dict[str, float]:
    """The column gap after the left one of ``result``'s donors (by ``names``' left-to-right order) that
    holds their heatmap; empty when it is not shown (see :func:`gap_donors`)."""
    if result is None or result.similarity is None or len(result.donors) != 2:
        return {}
    first, second = result.donors
    if first not in names or second not in names:
        return {}
    rows, cols = len(result.similarity), len(result.similarity[0]) if result.similarity else 0
    if (layers.get(first), layers.get(second)) != (rows, cols):
        return {}
    left, right = (first, second) if names.index(first) < names.index(second) else (second, first)
    return {left: GAP_X + heatmap_width(layers[right]) + AFTER}


def gap_donors(result: AnalysisResult | None, columns: Mapping[str, DonorColumnItem]) -> tuple[str, str] | None:
    """``result``'s two donors, left column first, when both are shown with the matrix's layer counts."""
    if result is None or result.similarity is None or len(result.donors) != 2:
        return None
    first, second = result.donors
    if first not in columns or second not in columns:
        return None
    rows, cols = len(result.similarity), len(result.similarity[0]) if result.similarity else 0
    if (columns[first].num_layers, columns[second].num_layers) != (rows, cols):
        return None
    return (first, second) if columns[first].x() <= columns[second].x() else (second, first)


class SimilarityGapItem(QGraphicsObject):
    """A heatmap beside the left donor's layers: its cosine with each of the right donor's layers."""

    def __init__(self, left: str, right: str, similarity: np.ndarray, geometry: StackGeometry,
                 width: float) -> None:
        """``similarity``: rows are ``left``'s layers, columns ``right``'s; ``width``: the heatmap's."""
        super().__init__()
        self.left, self.right, self.geometry, self.width = left, right, geometry, width
        self.similarity = np.asarray(similarity, dtype=np.float32)
        self.best = self.similarity.argmax(axis=1)
        cols = self.similarity.shape[1]
        self.bins = np.array_split(np.arange(cols), min(cols, max(1, int(width))))  # right layers per pixel column
        self.column_of = np.repeat(np.arange(len(self.bins)), [len(b) for b in self.bins])  # right layer → column
        low, high = float(self.similarity.min()), float(self.similarity.max())
        self.levels = (low, high + 1e-9)  # as the Analysis tab's colour bar
        self.image = self._image()
        self.setAcceptHoverEvents(True)
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)

    @property
    def key(self) -> tuple[str, str, StackGeometry]:
        return self.left, self.right, self.geometry

    def bin_values(self) -> np.ndarray:
        """Per row, the value drawn in each pixel column: the largest of its right layers."""
        return np.stack([self.similarity[:, b].max(axis=1) for b in self.bins], axis=1)

    def _image(self) -> QImage:
        low, high = self.levels
        scaled = (self.bin_values() - low) / (high - low)
        rgba = pg.colormap.get(COLOR_MAP).map(np.clip(scaled, 0.0, 1.0), mode="byte")
        rows, cols = scaled.shape
        image = QImage(np.ascontiguousarray(rgba, dtype=np.uint8).tobytes(), cols, rows, 4 * cols,
                       QImage.Format.Format_RGBA8888)
        return image.copy()  # owns its pixels (the bytes above are temporary)

    def boundingRect(self) -> QRectF:
        g = self.geometry
        return QRectF(GAP_X, g.top, self.width, len(self.similarity) * g.cell_h)

    def cell_color(self, row: int, column: int) -> QColor:
        """The colour drawn for ``row`` (a left layer) at pixel column ``column``."""
        return self.image.pixelColor(column, row)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        painter.drawImage(self.boundingRect(), self.image)
        g, step = self.geometry, self.width / len(self.bins)
        inset = 0.2 * g.cell_h
        for row, best in enumerate(self.best):  # the tick in the colour that stands out from its cell
            column = int(self.column_of[best])
            light = self.cell_color(row, column).lightnessF() > 0.5
            painter.setPen(QPen(QColor("black" if light else "white"), 1.0))
            x = GAP_X + (column + 0.5) * step
            painter.drawLine(QLineF(x, g.y(row) + inset, x, g.y(row + 1) - inset))

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(left layer, right layer) drawn at item coordinates ``(x, y)``: the brightest of its pixel column."""
        row = math.floor(self.geometry.layer_at(y))
        column = math.floor((x - GAP_X) * len(self.bins) / self.width)
        if not (0 <= row < len(self.similarity) and 0 <= column < len(self.bins)):
            return None
        layers = self.bins[column]
        return row, int(layers[self.similarity[row, layers].argmax()])

    def text_at(self, x: float, y: float) -> str:
        """The tooltip at item coordinates ``(x, y)``."""
        cell = self.cell_at(x, y)
        if cell is None:
            return ""
        row, layer = cell
        best = int(self.best[row])
        return (f"{self.left} {row} ↔ {self.right} {layer}: cos {self.similarity[row, layer]:.3f}\n"
                f"most similar to {self.left} {row}: {self.right} {best} (cos {self.similarity[row, best]:.3f})")

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        self.setToolTip(self.text_at(event.pos().x(), event.pos().y()))


def oriented(result: AnalysisResult, left: str) -> np.ndarray:
    """``result``'s similarity with ``left``'s layers as rows (the matrix's rows are its first donor's)."""
    matrix = np.asarray(result.similarity, dtype=np.float32)
    return matrix if result.donors[0] == left else matrix.T



