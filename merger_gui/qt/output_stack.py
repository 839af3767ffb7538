"""The merged model's layer stack: one cell per output layer, coloured by the donor it comes from."""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import (
    QGraphicsItem, QGraphicsObject, QGraphicsSceneHoverEvent, QGraphicsSceneMouseEvent,
    QStyleOptionGraphicsItem, QWidget,
)

from merger_gui.core.plan import LayerMap, StagePlan
from merger_gui.core.units import format_count

from .slice_items import HEADER_H, StackGeometry, header_fonts, label_font, label_step, text_on
from .theme import CanvasColors

OUTPUT_W = 132.0
INDEX_GUTTER = 30.0  # output layer numbers, left of the column


def plan_summary(stage_plan: StagePlan | None) -> str:
    """``"62 layers · 19.99 B params"`` (or a dash when there is no plan)."""
    if stage_plan is None:
        return "no layer plan"
    return f"{stage_plan.num_layers} layers · {format_count(stage_plan.params)} params"


class OutputColumnItem(QGraphicsObject):
    """Cells of the output stack; seams are drawn as bold lines between slices.

    Draws a :class:`LayerMap` (a stage plan, or the layers a drag would make) and takes a new
    one with :meth:`set_layer_map` (one repaint; the item is kept). Hovering a cell emits
    :attr:`sigHovered` (output layer or -1) so the view can light up its source cell;
    clicking one emits :attr:`sigClicked` with its slice index.
    """

    sigHovered = Signal(int)
    sigClicked = Signal(int)

    def __init__(self, layer_map: LayerMap | StagePlan, summary: str, colors_by_model: Mapping[str, QColor],
                 geometry: StackGeometry, colors: CanvasColors, title: str = "Output") -> None:
        super().__init__()
        self.layer_map, self.summary = layer_map, summary
        self.colors_by_model = colors_by_model
        self.geometry, self.colors, self.title = geometry, colors, title
        self.repeated = self._repeated(layer_map)
        self.setAcceptHoverEvents(True)
        # Painted row by row where exposed (no cache): a drag changes the cells at every layer step.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self._hovered = -1
        self.seam_marks: dict[int, tuple[QColor, str]] = {}  # seam → colour and text of its measured distance

    @staticmethod
    def _repeated(layer_map: LayerMap | StagePlan) -> dict[tuple[str, int], int]:
        return {(u.model, i): u.counts[i] for u in layer_map.donor_usage for i in u.repeated}

    @property
    def num_layers(self) -> int:
        return self.layer_map.num_layers

    def set_layer_map(self, layer_map: LayerMap | StagePlan, summary: str) -> None:
        """Draw ``layer_map`` instead (a drag's preview, or the plan once it is made)."""
        if summary != self.summary or layer_map.layers != self.layer_map.layers or \
                layer_map.seams != self.layer_map.seams:
            if layer_map.num_layers != self.num_layers:
                self.prepareGeometryChange()
            self.layer_map, self.summary = layer_map, summary
            self.repeated = self._repeated(layer_map)
            self.update()
        else:
            self.layer_map = layer_map  # the same cells: no repaint

    def set_seam_marks(self, marks: dict[int, tuple[QColor, str]]) -> None:
        """Colour the seams an analysis measured (output layer index → colour, tooltip text)."""
        if marks != self.seam_marks:
            self.seam_marks = marks
            self.update()

    def boundingRect(self) -> QRectF:
        g = self.geometry
        return QRectF(-INDEX_GUTTER, g.top - HEADER_H, OUTPUT_W + INDEX_GUTTER + 40,
                      HEADER_H + max(1, self.num_layers) * g.cell_h + 2)

    def cell_rect(self, index: int) -> QRectF:
        g = self.geometry
        return QRectF(0, g.y(index), OUTPUT_W, g.cell_h)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        g, c = self.geometry, self.colors
        title_font, sub_font = header_fonts()
        header = QRectF(-INDEX_GUTTER, g.top - HEADER_H, OUTPUT_W + INDEX_GUTTER + 40, HEADER_H - 6)
        center = QRectF(0, header.top(), OUTPUT_W, header.height())
        painter.setFont(title_font)
        painter.setPen(c.text)
        painter.drawText(center.adjusted(-40, 0, 40, -16), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom,
                         self.title)
        painter.setFont(sub_font)
        painter.setPen(c.muted_text)
        painter.drawText(center.adjusted(-40, 0, 40, 0), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom,
                         self.summary)
        font = label_font(g.cell_h)
        painter.setFont(font)
        step = label_step(g.cell_h)
        exposed = option.exposedRect
        first = max(0, int(g.layer_at(exposed.top())) - 1)
        last = min(self.num_layers, int(g.layer_at(exposed.bottom())) + 2)
        for layer in self.layer_map.layers[first:last]:
            cell = self.cell_rect(layer.index)
            part_w = OUTPUT_W / len(layer.sources)
            for k, source in enumerate(layer.sources):
                part = QRectF(cell.left() + k * part_w, cell.top(), part_w, cell.height())
                fill = QColor(self.colors_by_model.get(source.model, c.skipped))
                fill.setAlpha(200)
                painter.fillRect(part, fill)
                painter.setPen(text_on(fill))
                if step == 1 or layer.position == 0:  # small cells: label each slice's first layer
                    painter.drawText(part.adjusted(0, -6, 0, 6), Qt.AlignmentFlag.AlignCenter, str(source.layer))
                count = self.repeated.get((source.model, source.layer))
                if count and g.cell_h >= 9:
                    painter.drawText(part.adjusted(0, 0, -4, 0),
                                     Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"×{count}")
            if layer.index % step == 0:
                painter.setPen(c.muted_text)
                painter.drawText(QRectF(-INDEX_GUTTER, cell.top() - 6, INDEX_GUTTER - 4, cell.height() + 12),
                                 Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, str(layer.index))
        if g.cell_h >= 5:
            painter.setPen(QPen(c.background, 0))
            for i in range(max(1, first), last):
                painter.drawLine(QPointF(0, g.y(i)), QPointF(OUTPUT_W, g.y(i)))
        for seam in self.layer_map.seams:
            y = g.y(seam)
            mark = self.seam_marks.get(seam)
            painter.setPen(QPen(mark[0] if mark else c.seam, 4.0 if mark else 2.5))
            painter.drawLine(QPointF(-6, y), QPointF(OUTPUT_W + (14 if mark else 6), y))
        painter.setPen(QPen(c.cell_border, 1))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(QRectF(0, g.top, OUTPUT_W, self.num_layers * g.cell_h))

    def layer_at(self, pos: QPointF) -> int:
        if not 0 <= pos.x() <= OUTPUT_W:
            return -1
        index = int(self.geometry.layer_at(pos.y()))
        return index if 0 <= index < self.num_layers and pos.y() >= self.geometry.top else -1

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        index = self.layer_at(event.pos())
        if index != self._hovered:
            self._hovered = index
            self.setToolTip(self.layer_text(index) if index >= 0 else "")
            self.sigHovered.emit(index)  # the view may add to the tooltip

    def layer_text(self, index: int) -> str:
        """Where output layer ``index`` comes from, and its slice."""
        layer = self.layer_map.layers[index]
        sources = ", ".join(f"{s.model} layer {s.layer}" for s in layer.sources)
        mark = self.seam_marks.get(index)
        return f"Output layer {index} ← {sources}\nslice {layer.slice_index + 1}" + (f"\n{mark[1]}" if mark else "")

    def hoverLeaveEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        self._hovered = -1
        self.sigHovered.emit(-1)

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        index = self.layer_at(event.pos())
        if event.button() == Qt.MouseButton.LeftButton and index >= 0:
            self.sigClicked.emit(self.layer_map.layers[index].slice_index)
            event.accept()
        else:
            event.ignore()
