"""Time from releasing a slice drag to a settled designer, at ~300 output layers (not a test).

Opens a passthrough recipe of two Goliath-120B-shaped donors (built-in profile, 137 layers
each) whose 15 stacked slices make 300 output layers, then drags slice bars with real mouse
events on the stack view's viewport. Each drag is timed from the moment the button is
released:

* designer settled: the edit is committed and the donor columns, the bars and the output
  stack show it, painted (the output already followed the drag, from the scratch stage);
* plan settled: the live plan (parameter plan, validation, findings) has caught up too,
  after its debounce, and the designer shows the same layers;
* all current: no view has a refresh pending any more (in the window: the YAML text, which
  is rewritten a moment after the edit, and the other debounced panels).

Also reports the time per mouse move while dragging (the output follows the drag live).

Run from the repository root::

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_designer.py [--size 1366x768] [--drags 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PySide6.QtCore import QCoreApplication, QPoint, QPointF, QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from merger_gui.core.plan import plan_layers
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.live_plan import LivePlan
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.settle import pending_timers, settle
from merger_gui.qt.stack_view import StackView

DONOR = "profile:goliath-120b"
SLICES, SLICE_LAYERS, STEP = 15, 20, 8  # 15 slices of 20 layers: 300 output layers


def deep_recipe() -> Recipe:
    """Slices of 20 layers taken alternately from A and B, each 8 layers further down."""
    slices = tuple(Slice((SliceSource("A" if k % 2 == 0 else "B", (k * STEP, k * STEP + SLICE_LAYERS)),))
                   for k in range(SLICES))
    return Recipe((Stage("passthrough", slices=slices),))


def designer_settled(window: MainWindow | SimpleNamespace) -> bool:
    """The stack view shows the document's stage: nothing dragged, the output's layers current."""
    view = window.stack_view
    if view.is_dragging or view.output is None:
        return False
    return view.output.layer_map.layers == plan_layers(window.document.stage, window.registry.donors).layers


def plan_settled(window: MainWindow | SimpleNamespace) -> bool:
    """The live plan is current (no debounce pending) and the output shows its layers."""
    plan = window.live_plan.stage_plan(window.document.current_stage)
    return not window.live_plan.is_pending and plan is not None and designer_settled(window) and \
        window.stack_view.output.layer_map.layers == plan.layers


def all_current(window: MainWindow | SimpleNamespace) -> bool:
    """The plan is settled and no debounced view (YAML text, panels) waits to refresh."""
    return plan_settled(window) and not (isinstance(window, MainWindow) and pending_timers(window))


def wait_for(window: MainWindow | SimpleNamespace, settled: Callable[..., bool], timeout_s: float = 5.0) -> None:
    app = QCoreApplication.instance()
    deadline = time.monotonic() + timeout_s
    while not settled(window):
        if time.monotonic() > deadline:
            raise SystemExit(f"{settled.__name__}: not within {timeout_s} s")
        app.processEvents()
    window.stack_view.viewport().repaint()  # paint the settled state, as the event loop would


def drag_bar(window: MainWindow | SimpleNamespace, slice_index: int, layers: int,
             moves: int) -> tuple[float, float, float, float]:
    """Drag slice ``slice_index``'s bar by ``layers``: ms per mouse move, ms from release to the
    designer settled, to the plan settled and to every view current."""
    view = window.stack_view
    view.ensure_slice_visible(slice_index)
    bar = view.slice_bar(slice_index)
    start, end = bar.range
    viewport = view.viewport()
    press = view.mapFromScene(QPointF(bar.x() + bar.width / 2, view.geometry_.y((start + end) / 2)))
    delta = QPoint(0, round(layers * view.geometry_.cell_h))
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, press)
    began = time.perf_counter()
    for k in range(1, moves + 1):
        QTest.mouseMove(viewport, press + delta * (k / moves))
        viewport.repaint()
    per_move = (time.perf_counter() - began) * 1000 / moves
    began = time.perf_counter()
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, press + delta)
    wait_for(window, designer_settled)
    designer = (time.perf_counter() - began) * 1000
    wait_for(window, plan_settled)
    planned = (time.perf_counter() - began) * 1000
    wait_for(window, all_current)
    return per_move, designer, planned, (time.perf_counter() - began) * 1000


def whole_window(width: int, height: int) -> MainWindow:
    window = MainWindow(Settings(QSettings(str(Path(tempfile.mkdtemp(prefix="bench-designer-")) / "settings.ini"),
                                           QSettings.Format.IniFormat)))
    window.resize(width, height)
    window.show()
    window.show_designer()
    window.document.load(deep_recipe())
    for name in ("A", "B"):
        window.registry.set_donor(name, DONOR, resolve_donor(DONOR))
    settle(window)
    return window


def designer_alone(width: int, height: int) -> SimpleNamespace:
    """The stack view with its document, donors and live plan, and no other view of the recipe."""
    document, registry = RecipeDocument(), DonorRegistry()
    live_plan = LivePlan(document, registry)
    view = StackView(document, live_plan, registry)
    view.resize(width, height)
    view.show()
    document.load(deep_recipe())
    for name in ("A", "B"):
        registry.set_donor(name, DONOR, resolve_donor(DONOR))
    live_plan.refresh_now()
    return SimpleNamespace(document=document, registry=registry, live_plan=live_plan, stack_view=view)


def report(title: str, target: MainWindow | SimpleNamespace, drags: int, moves: int) -> None:
    figures = [drag_bar(target, 1 + k % (SLICES - 2), 2 if k % 4 < 2 else -2, moves) for k in range(drags)]
    assert target.document.undo_stack.count() == drags, "every drag is one undo step"
    print(f"{title}, {target.live_plan.stage_plan(0).num_layers} output layers, {drags} drags (median, max):")
    for i, what in enumerate(("per mouse move while dragging", "release -> designer settled",
                              "release -> plan settled (debounced)", "release -> every view current")):
        values = [f[i] for f in figures]
        print(f"  {what}: {statistics.median(values):.1f} ms, {max(values):.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1366x768", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--drags", type=int, default=20, help="drags to time")
    parser.add_argument("--moves", type=int, default=12, help="mouse moves per drag")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    app = QApplication.instance() or QApplication(sys.argv)
    window = whole_window(width, height)
    size = window.stack_view.size()
    report(f"Stack view alone ({size.width()}x{size.height()})", designer_alone(size.width(), size.height()),
           args.drags, args.moves)
    report(f"Whole window ({args.size}: YAML, curves, donors and problems follow each edit too)", window,
           args.drags, args.moves)
    window.document.undo_stack.setClean()
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
