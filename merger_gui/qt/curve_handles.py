"""The draggable control points of the t-curve editor's rules."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt, Signal
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from merger_gui.core.gradient_fit import FREE_STEP, snap, snap_step


def modifier_step(modifiers: Qt.KeyboardModifier, bounds: tuple[float, float]) -> float:
    """The snapping step for ``modifiers``: coarse (0.05 of a unit range), Shift fine (0.01),
    Alt free (the finest precision values are written with)."""
    if modifiers & Qt.KeyboardModifier.AltModifier:
        return FREE_STEP
    return snap_step(bounds, fine=bool(modifiers & Qt.KeyboardModifier.ShiftModifier))


class CurveHandlesItem(pg.ScatterPlotItem):
    """Control points of the edited rules; each spot's data is ``(rule, point)``.

    Dragging moves every copy of a point (one per slice) vertically, snapped (see
    :func:`modifier_step`, steps of ``snap_bounds``) and clamped to the parameter's bounds;
    ``sigPointMoved`` previews, ``sigPointMoveFinished(rule, point, old, new)`` fires once on
    release; a right click during a drag restores the start. Pressing a point selects it.
    """

    sigPointMoved = Signal(int, int, float)
    sigPointMoveFinished = Signal(int, int, float, float)
    sigPointDoubleClicked = Signal(int, int)
    sigPointSelected = Signal(int, int)

    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__(pxMode=True, size=11, hoverable=True, hoverSize=14)
        self.value_range = bounds
        self.snap_bounds = bounds  # the edit range the snapping step is a share of
        self.step = snap_step(bounds)  # the step of the drag in progress (or the last one)
        self._drag: tuple[int, int, float] | None = None  # rule, point, start value

    def _hit(self, pos: QPointF) -> tuple[int, int] | None:
        spots = self.pointsAt(pos)
        return tuple(spots[0].data()) if len(spots) else None

    def _move_copies(self, key: tuple[int, int], value: float) -> None:
        data = self.data
        for i in range(len(data)):
            if tuple(data["data"][i]) == key:
                data["y"][i] = value
        self.updateSpots()
        self.prepareGeometryChange()
        self.informViewBoundsChanged()

    def mouseDragEvent(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton:
            ev.ignore()
            return
        if ev.isStart():
            hit = self._hit(ev.buttonDownPos())
            if hit is None:
                ev.ignore()
                return
            start = float(next(self.data["y"][i] for i in range(len(self.data))
                               if tuple(self.data["data"][i]) == hit))
            self._drag = (hit[0], hit[1], start)
            self.sigPointSelected.emit(*hit)
        if self._drag is None:
            ev.ignore()
            return
        ev.accept()
        rule, point, start = self._drag
        low, high = self.value_range
        self.step = modifier_step(ev.modifiers(), self.snap_bounds)
        value = min(high, max(low, snap(ev.pos().y(), self.step)))
        self._move_copies((rule, point), value)
        if ev.isFinish():
            self._drag = None
            self.sigPointMoveFinished.emit(rule, point, start, value)
        else:
            self.sigPointMoved.emit(rule, point, value)

    def mouseClickEvent(self, ev) -> None:
        if self._drag is not None and ev.button() == Qt.MouseButton.RightButton:
            rule, point, start = self._drag
            self._drag = None
            self._move_copies((rule, point), start)
            self.sigPointMoved.emit(rule, point, start)
            ev.accept()
            return
        hit = self._hit(ev.pos())
        if hit is not None and ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            if ev.double():
                self.sigPointDoubleClicked.emit(*hit)
            else:
                self.sigPointSelected.emit(*hit)
            return
        ev.ignore()
