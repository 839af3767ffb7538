"""Graphics items of the stack designer: donor columns (drag to create) and slice bars (drag to edit).

Items follow pyqtgraph's pattern: they preview while the mouse moves (``sig…Changed``),
report once on release (``sig…Finished``) and restore the start on a right-click during
the drag. The view turns a finished drag into one document edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import (
    QGraphicsItem, QGraphicsLineItem, QGraphicsObject, QGraphicsSceneContextMenuEvent, QGraphicsSceneHoverEvent,
    QGraphicsSceneMouseEvent, QStyleOptionGraphicsItem, QWidget,
)

from merger_gui.core.slice_edits import layer_range_label

from .theme import CanvasColors

HEADER_H = 54.0  # room above a column for its name (up to two lines) and layer count
TITLE_LINE_H = 14.0
CELL_LABEL_W = 40.0  # the layer-number part of a donor column
LANE_W = 32.0  # one lane of slice bars; overlapping slices get more lanes
MIN_LANE_W = 10.0  # lanes share the column's width down to this, so an overlap rarely widens it
LEGIBLE_FONT_PX = 10  # layer numbers are never drawn smaller; small cells get fewer of them
LABEL_PITCH = 12.0  # vertical room a layer number needs
EDGE_GRIP = 5.0  # pixels at a bar's ends that resize instead of move
LINK_DY = 7.0  # links join a slice's bars this far below their tops, past the rounded corner
DRAG_THRESHOLD = 3.0
MIN_COLUMN_W = 116.0
MAX_COLUMN_W = 190.0
COMPACT_COLUMN_W = 84.0  # when the stacks do not fit the view
COMPACT_TITLE_W = 112.0  # a compact column widens up to this for a one-line name, or a two-line one

Density = Literal["wide", "compact", "narrow"]  # how tightly the donor columns are laid out


def text_on(fill: QColor) -> QColor:
    """Black or white, whichever reads better on ``fill``."""
    luminance = 0.299 * fill.redF() + 0.587 * fill.greenF() + 0.114 * fill.blueF()
    return QColor("#111318") if luminance > 0.62 else QColor("#ffffff")


@dataclass(frozen=True)
class StackGeometry:
    """Vertical mapping shared by every column: layer ``i`` spans ``top + i*cell_h`` downwards."""

    top: float
    cell_h: float

    def y(self, layer: float) -> float:
        return self.top + layer * self.cell_h

    def layer_at(self, y: float) -> float:
        return (y - self.top) / self.cell_h


def label_font(cell_h: float, bold: bool = False) -> QFont:
    """The font of layer numbers: legible at any zoom (small cells label fewer layers instead)."""
    font = QFont()
    font.setPixelSize(int(max(LEGIBLE_FONT_PX, min(11, cell_h - 2))))
    font.setBold(bold)
    return font


def header_fonts() -> tuple[QFont, QFont]:
    title = QFont()
    title.setPixelSize(12)
    title.setBold(True)
    sub = QFont()
    sub.setPixelSize(11)
    return title, sub


def _split_title(title: str, metrics: QFontMetrics) -> list[str]:
    """``title`` split in two at the separator that makes the longer line shortest."""
    cuts = [i + 1 for i, ch in enumerate(title[:-1]) if ch in "-_./ "] or [len(title) // 2]
    cut = min(cuts, key=lambda i: max(metrics.horizontalAdvance(title[:i]), metrics.horizontalAdvance(title[i:])))
    return [title[:cut].strip(), title[cut:].strip()]


def title_lines(title: str, metrics: QFontMetrics, width: float) -> list[str]:
    """``title`` on one line if it fits, else on two (each elided only if it still does not fit)."""
    if metrics.horizontalAdvance(title) <= width:
        return [title]
    return [metrics.elidedText(line, Qt.TextElideMode.ElideMiddle, int(width)) for line in _split_title(title, metrics)]


def title_width(title: str, metrics: QFontMetrics) -> float:
    """Width of ``title`` at its best two-line split."""
    return max(metrics.horizontalAdvance(line) for line in _split_title(title, metrics)) if len(title) > 1 else 0.0


def subtitle_line(subtitle: str, metrics: QFontMetrics, width: float) -> str:
    """``subtitle`` as it fits ``width``: whole, else its first part (the layer count) rather than a cut
    family ("8 layers · lla…"), elided only if even that does not fit. Qt elides a text whose advance
    equals the width, so the test is eliding itself, not the advance."""
    def fitted(text: str) -> str:
        return metrics.elidedText(text, Qt.TextElideMode.ElideRight, int(width))

    return subtitle if fitted(subtitle) == subtitle else fitted(subtitle.split(" · ")[0])


def label_step(cell_h: float) -> int:
    """Label every layer when cells are tall enough for a legible number, else every 2nd, 5th, 10th…"""
    return next((step for step in (1, 2, 5, 10, 20, 50) if step * cell_h >= LABEL_PITCH), 100)


def column_width(title: str, lanes: int, density: Density) -> float:
    """Width of a donor column: room for its title, its layer numbers and ``lanes`` lanes of bars.

    ``"wide"`` columns fit the name on one line; ``"compact"`` ones are narrow but keep a name of
    ordinary length on one line; ``"narrow"`` ones break every long name in two.
    """
    metrics = QFontMetrics(header_fonts()[0])
    one_line = metrics.horizontalAdvance(title) + 10.0
    two_lines = min(COMPACT_TITLE_W, title_width(title, metrics) + 8)
    if density == "wide":
        title_w = min(MAX_COLUMN_W, one_line)
    elif density == "compact":
        title_w = one_line if one_line <= COMPACT_TITLE_W else two_lines
    else:
        title_w = two_lines
    least = MIN_COLUMN_W if density == "wide" else COMPACT_COLUMN_W
    return max(least, title_w, CELL_LABEL_W + lanes * MIN_LANE_W + 4)


class DonorColumnItem(QGraphicsObject):
    """One donor's layer stack; dragging over its cells proposes a new slice.

    Cells used by the stage are tinted with the donor colour (darker when used more than
    once), skipped layers are hatched, and an unknown donor is drawn dashed.
    """

    sigCreateChanged = Signal(int, int)  # preview [start, end)
    sigCreateFinished = Signal(int, int)
    sigCreateCancelled = Signal()

    def __init__(self, name: str, title: str, subtitle: str, num_layers: int, known: bool,
                 counts: tuple[int, ...] | None, color: QColor, lanes: int,
                 geometry: StackGeometry, colors: CanvasColors, tooltip: str, density: Density = "wide") -> None:
        super().__init__()
        self.name, self.title, self.subtitle = name, title, subtitle
        self.num_layers, self.known, self.counts = num_layers, known, counts
        self.color, self.lanes, self.geometry, self.colors = color, lanes, geometry, colors
        self.width = column_width(title, lanes, density)
        self.lane_w = min(LANE_W, (self.width - CELL_LABEL_W - 4) / lanes)
        self._drag_start: int | None = None
        self._drag_range: tuple[int, int] | None = None
        self._press_y = 0.0
        self.setToolTip(tooltip)
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)  # cells repaint only on rebuild

    def boundingRect(self) -> QRectF:
        g = self.geometry
        return QRectF(0, g.top - HEADER_H, self.width, HEADER_H + self.num_layers * g.cell_h + 1)

    def cells_rect(self) -> QRectF:
        g = self.geometry
        return QRectF(0, g.top, self.width, self.num_layers * g.cell_h)

    def lane_x(self, lane: int) -> float:
        return self.width - (self.lanes - lane) * self.lane_w

    def set_counts(self, counts: tuple[int, ...] | None) -> None:
        """Tint the cells by ``counts`` (a drag's preview, or the plan's)."""
        if counts != self.counts:
            self.counts = counts
            self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        g, c = self.geometry, self.colors
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        title_font, sub_font = header_fonts()
        header = QRectF(0, g.top - HEADER_H, self.width, HEADER_H - 6)
        painter.setFont(title_font)
        painter.setPen(self.color if self.known else c.muted_text)
        lines = title_lines(self.title, QFontMetrics(title_font), self.width)
        for k, line in enumerate(reversed(lines)):  # bottom line first, just above the subtitle
            bottom = -16 - k * TITLE_LINE_H
            painter.drawText(header.adjusted(0, 0, 0, bottom),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, line)
        painter.setFont(sub_font)
        painter.setPen(c.muted_text)
        sub = subtitle_line(self.subtitle, QFontMetrics(sub_font), self.width)
        painter.drawText(header, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, sub)

        body = self.cells_rect()
        painter.fillRect(body, c.column)
        tint = QColor(self.color)
        hatch = QBrush(c.skipped, Qt.BrushStyle.BDiagPattern)
        font = label_font(g.cell_h)
        painter.setFont(font)
        step = label_step(g.cell_h)
        for layer in range(self.num_layers):
            cell = QRectF(0, g.y(layer), self.width, g.cell_h)
            count = self.counts[layer] if self.counts and layer < len(self.counts) else None
            if count == 0:  # hatched right of the layer numbers, so they stay readable
                painter.fillRect(cell.adjusted(CELL_LABEL_W - 2, 0, 0, 0), hatch)
            elif count:
                tint.setAlpha(70 if count == 1 else 150)
                painter.fillRect(cell, tint)
            if layer % step == 0:
                painter.setPen(c.text if count else c.muted_text)
                text_rect = QRectF(2, cell.top() - 6, CELL_LABEL_W - 6, g.cell_h + 12)
                painter.drawText(text_rect, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, str(layer))
            if count and count > 1 and g.cell_h >= 9:  # beside the number: the bars cover the right side
                painter.setPen(c.text)
                painter.drawText(cell.adjusted(CELL_LABEL_W - 2, 0, 0, 0),
                                 Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"×{count}")
        if g.cell_h >= 5:
            painter.setPen(QPen(c.cell_border, 0))
            for layer in range(1, self.num_layers):
                y = g.y(layer)
                painter.drawLine(QPointF(0, y), QPointF(self.width, y))
        border = QPen(self.color if self.known else c.muted_text, 1)
        if not self.known:
            border.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(border)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(body)

    def _layer(self, y: float) -> int:
        return int(max(0, min(self.num_layers - 1, self.geometry.layer_at(y))))

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._drag_start is not None:
            self._drag_start = self._drag_range = None  # right-click cancels the drag
            self.sigCreateCancelled.emit()
            event.accept()
            return
        if event.button() != Qt.MouseButton.LeftButton or not self.cells_rect().contains(event.pos()):
            event.ignore()
            return
        self._drag_start = self._layer(event.pos().y())
        self._drag_range = None
        self._press_y = event.pos().y()
        event.accept()

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if self._drag_start is None:
            return
        if self._drag_range is None and abs(event.pos().y() - self._press_y) < DRAG_THRESHOLD:
            return
        here = self._layer(event.pos().y())
        new = (min(self._drag_start, here), max(self._drag_start, here) + 1)
        if new != self._drag_range:
            self._drag_range = new
            self.sigCreateChanged.emit(*new)

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._drag_start is None:
            return
        drag, self._drag_start, self._drag_range = self._drag_range, None, None
        if drag is not None:
            self.sigCreateFinished.emit(*drag)
        else:
            self.sigCreateCancelled.emit()


class SliceBarItem(QGraphicsObject):
    """One slice source on its donor column: drag the body to move it, an end to resize it."""

    sigPressed = Signal()
    sigChanged = Signal(int, int)  # preview [start, end)
    sigChangeFinished = Signal(object, object)  # (old range, new range)
    sigContextMenu = Signal(QPoint)

    def __init__(self, slice_index: int, source_index: int, model: str, layer_range: tuple[int, int],
                 num_layers: int | None, color: QColor, geometry: StackGeometry, colors: CanvasColors,
                 x: float, width: float = LANE_W - 4, ghost: bool = False, linked: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.slice_index, self.source_index, self.model = slice_index, source_index, model
        self.linked = linked  # the slice's other sources, described for the tooltip
        self.range = layer_range
        self.num_layers = num_layers
        self.color, self.geometry, self.colors = color, geometry, colors
        self.width, self.ghost = width, ghost
        self.selected = False
        self._mode: str | None = None  # "move" | "top" | "bottom" while dragging
        self._start_range = layer_range
        self._press_y = 0.0
        self._moved = False
        self._cancelled = False
        self.setPos(x, 0)
        self.setZValue(10 if not ghost else 20)
        if not ghost:
            self.setAcceptHoverEvents(True)
            self.setCursor(Qt.CursorShape.OpenHandCursor)
            self._update_tooltip()

    @property
    def is_dragging(self) -> bool:
        return self._mode is not None

    def _update_tooltip(self) -> None:
        start, end = self.range
        self.setToolTip(f"Slice {self.slice_index + 1}: {self.model}, {layer_range_label(start, end)}\n"
                        f"layer_range: [{start}, {end}]\n"
                        + (f"merged with {', '.join(self.linked)} (resizing resizes all)\n" if self.linked else "")
                        + "Drag to move, drag an end to resize; right-click for more")

    def bar_rect(self) -> QRectF:
        g = self.geometry
        start, end = self.range
        return QRectF(0, g.y(start), self.width, (end - start) * g.cell_h)

    def boundingRect(self) -> QRectF:
        return self.bar_rect().adjusted(-2, -2, 2, 2)

    def set_range(self, layer_range: tuple[int, int]) -> None:
        if layer_range != self.range:
            self.prepareGeometryChange()
            self.range = layer_range
            self.update()

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.selected = selected
            self.setZValue(12 if selected else 10)
            self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        rect = self.bar_rect().adjusted(0.5, 0.5, -0.5, -0.5)
        fill = QColor(self.color)
        if self.ghost:
            fill.setAlpha(90)
            pen = QPen(self.colors.text, 1.2, Qt.PenStyle.DashLine)
        else:
            fill.setAlpha(235 if self.selected else 200)
            pen = QPen(self.colors.selection if self.selected else fill.darker(140), 2.5 if self.selected else 1)
        painter.setPen(pen)
        painter.setBrush(fill)
        painter.drawRoundedRect(rect, 4, 4)
        start, end = self.range
        painter.setPen(text_on(fill) if not self.ghost else self.colors.text)
        font = QFont()
        font.setPixelSize(11)
        font.setBold(True)
        painter.setFont(font)
        if self.ghost:
            title = f"{start}–{end - 1}" if end - start > 1 else str(start)
        else:
            title = f"#{self.slice_index + 1}"
        if rect.height() >= 14:
            painter.drawText(rect.adjusted(0, 2, 0, 0), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                             title)
        if not self.ghost and rect.height() >= 70:
            painter.save()
            painter.translate(rect.center())
            painter.rotate(-90)
            font.setBold(False)
            painter.setFont(font)
            text = f"{start}–{end - 1}"
            painter.drawText(QRectF(-rect.height() / 2 + 18, -rect.width() / 2, rect.height() - 22, rect.width()),
                             Qt.AlignmentFlag.AlignCenter, text)
            painter.restore()
        if self.selected and not self.ghost:
            painter.setPen(QPen(text_on(fill), 2))
            cx = rect.center().x()
            for y in (rect.top() + 2.5, rect.bottom() - 2.5):
                painter.drawLine(QPointF(cx - 6, y), QPointF(cx + 6, y))

    def _zone(self, y: float) -> str:
        rect = self.bar_rect()
        grip = min(EDGE_GRIP, rect.height() / 3)
        if y <= rect.top() + grip:
            return "top"
        if y >= rect.bottom() - grip:
            return "bottom"
        return "move"

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:
        zone = self._zone(event.pos().y())
        self.setCursor(Qt.CursorShape.OpenHandCursor if zone == "move" else Qt.CursorShape.SizeVerCursor)

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._mode is not None:
            self._mode = None  # right-click during a drag puts the bar back
            self._cancelled = True
            self.set_range(self._start_range)
            self.sigChanged.emit(*self._start_range)
            event.accept()
            return
        if event.button() != Qt.MouseButton.LeftButton:
            event.ignore()
            return
        self._mode = self._zone(event.pos().y())
        self._start_range = self.range
        self._press_y = event.pos().y()
        self._moved = False
        self._cancelled = False
        if self._mode == "move":
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        self.sigPressed.emit()
        event.accept()

    def _dragged_range(self, y: float) -> tuple[int, int]:
        delta = round((y - self._press_y) / self.geometry.cell_h)
        start, end = self._start_range
        upper = self.num_layers
        if self._mode == "move":
            length = end - start
            new_start = start + delta
            if upper is not None:
                new_start = min(new_start, upper - length)
            new_start = max(0, new_start)
            return new_start, new_start + length
        if self._mode == "top":
            return max(0, min(start + delta, end - 1)), end
        new_end = max(start + 1, end + delta)
        return start, new_end if upper is None else min(new_end, upper)

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if self._mode is None:
            return
        if not self._moved and abs(event.pos().y() - self._press_y) < DRAG_THRESHOLD:
            return
        self._moved = True
        new = self._dragged_range(event.pos().y())
        if new != self.range:
            self.set_range(new)
            self.sigChanged.emit(*new)

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        if self._cancelled:
            self._cancelled = False
            return
        if self._mode is None:
            return
        self._mode = None
        self.setCursor(Qt.CursorShape.OpenHandCursor)
        if self.range != self._start_range:
            self.sigChangeFinished.emit(self._start_range, self.range)

    def contextMenuEvent(self, event: QGraphicsSceneContextMenuEvent) -> None:
        if self._mode is None and not self.ghost:
            self.sigContextMenu.emit(event.screenPos())
            event.accept()


class SliceLinkItem(QGraphicsLineItem):
    """The dashed line joining two sources of one slice, from the left bar's top to the right one's."""

    def __init__(self, left: SliceBarItem, right: SliceBarItem, pen: QPen) -> None:
        super().__init__()
        self.left, self.right = left, right
        self.setPen(pen)
        self.setZValue(5)
        self.follow()

    def follow(self) -> None:
        """Join the bars where they are now (a drag moves them before the recipe changes)."""
        y_left, y_right = self.left.bar_rect().top() + LINK_DY, self.right.bar_rect().top() + LINK_DY
        self.setLine(self.left.x() + self.left.width, y_left, self.right.x(), y_right)


class RangeTipItem(QGraphicsObject):
    """The range a drag would give, next to the cursor: ``"layers 12–39 (28 layers)"``."""

    PAD = 4.0

    def __init__(self, colors: CanvasColors) -> None:
        super().__init__()
        self.colors = colors
        self.text = ""
        self.font = QFont()
        self.font.setPixelSize(12)
        self.font.setBold(True)
        self.setZValue(50)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    @staticmethod
    def describe(start: int, end: int) -> str:
        count = end - start
        return f"{layer_range_label(start, end)} ({count} layer{'s' if count != 1 else ''})"

    def show_range(self, start: int, end: int, at: QPointF) -> None:
        text = self.describe(start, end)
        if text != self.text:
            self.prepareGeometryChange()
            self.text = text
        self.setPos(at + QPointF(16, -8))
        self.setVisible(True)

    def boundingRect(self) -> QRectF:
        width = QFontMetrics(self.font).horizontalAdvance(self.text)
        return QRectF(0, 0, width + 2 * self.PAD, 18)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        rect = self.boundingRect()
        painter.setPen(QPen(self.colors.muted_text, 1))
        painter.setBrush(self.colors.background)
        painter.drawRoundedRect(rect.adjusted(0.5, 0.5, -0.5, -0.5), 3, 3)
        painter.setFont(self.font)
        painter.setPen(self.colors.text)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self.text)
