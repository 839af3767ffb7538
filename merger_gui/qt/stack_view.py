"""The stack designer: donors' layer stacks with their slices, and the output stack beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction, QBrush, QContextMenuEvent, QKeySequence, QMouseEvent, QPainter, QPen, QResizeEvent, QWheelEvent,
)
from PySide6.QtWidgets import (
    QApplication, QGraphicsItem, QGraphicsRectItem, QGraphicsScene, QGraphicsSimpleTextItem, QGraphicsTextItem,
    QGraphicsView, QMenu, QTabBar, QWidget,
)

from merger_gui.core import slice_edits
from merger_gui.core.curve_rows import values_at_layer
from merger_gui.core.donor import DonorInfo
from merger_gui.core.donor import MAX_LAYERS
from merger_gui.core.lora_config import adapter_facts
from merger_gui.core.methods import method_spec
from merger_gui.core.plan import LayerMap, plan_layers
from merger_gui.core.recipe import SliceSource, Stage
from merger_gui.core.slice_edits import layer_range_label

from .analysis_items import STRIP_GAP, DistanceStripItem, seam_marks, strip_top
from .analysis_job import AnalysisResult
from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .live_plan import LivePlan
from .output_stack import INDEX_GUTTER, OUTPUT_W, OutputColumnItem, plan_summary
from .similarity_gap_item import SimilarityGapItem, gap_donors, heatmap_width, oriented, widened_gaps
from .slice_items import (
    HEADER_H, Density, DonorColumnItem, RangeTipItem, SliceBarItem, SliceLinkItem, StackGeometry, column_width,
)
from .theme import CanvasColors, current_theme

MARGIN = 12.0
LEGIBLE_CELL_H = 12.0  # the readable scale never goes below this: layer numbers stay at 10 px or more
MAX_CELL_H = 22.0
MIN_ZOOM_CELL_H, MAX_ZOOM_CELL_H = 2.0, 40.0  # what an explicit zoom may choose
ZOOM_STEP = 1.25
DEFAULT_DONOR_LAYERS = 32  # the readable scale's guess while no donor's layer count is known
AUTOSCROLL_EDGE = 28.0  # pixels from the viewport's top or bottom where a drag scrolls the stacks
AUTOSCROLL_MS = 30
NOTE_W = 180.0  # width of the "no output plan" note beside the donors

StageEdit = Callable[[Stage], Stage]


@dataclass(frozen=True)
class Spacing:
    """Horizontal room between the stacks: after a donor column, before the output's layer numbers,
    and right of the output column (its seam marks, a summary wider than the column)."""

    column_gap: float
    output_gap: float
    right: float


WIDE = Spacing(22.0, 40.0, 40.0)
COMPACT = Spacing(14.0, 20.0, 14.0)  # when the stacks at full width do not fit the view
DENSITIES: tuple[Density, ...] = ("wide", "compact", "narrow")  # tried in this order
SPACING: dict[Density, Spacing] = {"wide": WIDE, "compact": COMPACT, "narrow": COMPACT}


def _assign_lanes(ranges: list[tuple[int, int]]) -> list[int]:
    """Greedy interval colouring: overlapping ranges of one donor get different lanes."""
    lane_ends: list[int] = []
    lanes = [0] * len(ranges)
    for i in sorted(range(len(ranges)), key=lambda k: ranges[k]):
        start, end = ranges[i]
        for lane, lane_end in enumerate(lane_ends):
            if lane_end <= start:
                lanes[i], lane_ends[lane] = lane, end
                break
        else:
            lanes[i] = len(lane_ends)
            lane_ends.append(end)
    return lanes


class SliceActions(QObject):
    """Delete / duplicate / reorder / nudge the selected slice, as shared ``QAction`` s.

    Nudges move the selected slice by one layer (Up/Down), or its start (Ctrl+Up/Down) or its
    end (Shift+Up/Down); each is one undo step.
    """

    def __init__(self, document: RecipeDocument, num_layers: Callable[[str], int | None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.num_layers = num_layers
        self.delete = self._action("Delete slice", QKeySequence.StandardKey.Delete, self.delete_selected)
        self.duplicate = self._action("Duplicate slice", QKeySequence("Ctrl+D"), self.duplicate_selected)
        self.move_up = self._action("Move slice up", QKeySequence("Alt+Up"), lambda: self.move_selected(-1))
        self.move_down = self._action("Move slice down", QKeySequence("Alt+Down"), lambda: self.move_selected(1))
        self.actions = (self.move_up, self.move_down, self.duplicate, self.delete)
        self.delete.setToolTip("Remove the selected slice from the output (Delete)")
        self.nudges = (
            self._nudge("Take one layer earlier", "Up", lambda: self.nudge_selected(None, -1)),
            self._nudge("Take one layer later", "Down", lambda: self.nudge_selected(None, 1)),
            self._nudge("Start one layer earlier", "Ctrl+Up", lambda: self.nudge_selected("start", -1)),
            self._nudge("Start one layer later", "Ctrl+Down", lambda: self.nudge_selected("start", 1)),
            self._nudge("End one layer earlier", "Shift+Up", lambda: self.nudge_selected("end", -1)),
            self._nudge("End one layer later", "Shift+Down", lambda: self.nudge_selected("end", 1)),
        )
        document.selection_changed.connect(self.update_enabled)
        document.recipe_changed.connect(self.update_enabled)
        self.update_enabled()

    def _action(self, text: str, shortcut: QKeySequence | QKeySequence.StandardKey,
                slot: Callable[[], object]) -> QAction:
        action = QAction(text, self)
        action.setShortcut(shortcut)
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.triggered.connect(slot)
        return action

    def _nudge(self, text: str, keys: str, slot: Callable[[], object]) -> QAction:
        action = self._action(text, QKeySequence(keys), slot)
        action.setToolTip(f"{text}: the selected slice's layers ({keys})")
        return action

    def _selected(self) -> int | None:
        selection = self.document.selection
        slices = self.document.stage.slices or ()
        if selection is None or selection[0] != self.document.current_stage or selection[1] >= len(slices):
            return None
        return selection[1]

    def update_enabled(self, *_: object) -> None:
        index = self._selected()
        count = len(self.document.stage.slices or ())
        self.delete.setEnabled(index is not None)
        self.duplicate.setEnabled(index is not None)
        self.move_up.setEnabled(index is not None and index > 0)
        self.move_down.setEnabled(index is not None and index < count - 1)
        for action in self.nudges:
            action.setEnabled(index is not None)

    def delete_selected(self) -> None:
        index = self._selected()
        if index is not None:
            self.document.apply_to_stage(lambda s: slice_edits.delete_slice(s, index), f"Delete slice {index + 1}")
            self.document.select_slice(None)

    def duplicate_selected(self) -> None:
        index = self._selected()
        if index is not None:
            self.document.apply_to_stage(lambda s: slice_edits.duplicate_slice(s, index),
                                         f"Duplicate slice {index + 1}")
            self.document.select_slice(index + 1)

    def move_selected(self, delta: int) -> None:
        index = self._selected()
        count = len(self.document.stage.slices or ())
        if index is not None and 0 <= index + delta < count:
            self.document.apply_to_stage(lambda s: slice_edits.reorder_slice(s, index, index + delta),
                                         f"Move slice {index + 1} {'up' if delta < 0 else 'down'}")
            self.document.select_slice(index + delta)

    def nudge_selected(self, end: str | None, delta: int) -> None:
        """Move the selected slice (``end`` None), or its ``"start"`` or ``"end"``, by ``delta`` layers."""
        index = self._selected()
        if index is None:
            return
        limits = {s.model: self.num_layers(s.model) for s in (self.document.stage.slices or ())[index].sources}
        if end is None:
            self.document.apply_to_stage(lambda s: slice_edits.nudge_slice(s, index, delta, num_layers=limits),
                                         f"Nudge slice {index + 1} {'up' if delta < 0 else 'down'}")
        else:
            side: Literal["start", "end"] = "start" if end == "start" else "end"
            self.document.apply_to_stage(
                lambda s: slice_edits.nudge_slice_end(s, index, side, delta, num_layers=limits),
                f"Nudge the {side} of slice {index + 1}")


class StageBar(QTabBar):
    """One tab per stage of a multi-stage recipe (hidden for a single stage)."""

    def __init__(self, document: RecipeDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.setDocumentMode(True)
        self.setExpanding(False)
        self.setElideMode(Qt.TextElideMode.ElideMiddle)
        self.setUsesScrollButtons(False)
        self.setDrawBase(False)
        self.menu_actions: tuple[QAction, ...] = ()  # the tab context menu (stage actions)
        self.currentChanged.connect(self._on_tab)
        document.recipe_changed.connect(self.refresh)
        document.current_stage_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: object) -> None:
        stages = self.document.recipe.stages
        self.blockSignals(True)
        while self.count() > len(stages):
            self.removeTab(self.count() - 1)
        for i, stage in enumerate(stages):
            text = (stage.name or stage.merge_method).split("/")[-1]
            if i >= self.count():
                self.addTab(text)
            else:
                self.setTabText(i, text)
            self.setTabToolTip(i, f"Stage {i + 1}: {stage.name or '(unnamed)'}, merge_method {stage.merge_method}")
        self.setCurrentIndex(self.document.current_stage)
        self.blockSignals(False)
        self.setVisible(len(stages) > 1)

    def _on_tab(self, index: int) -> None:
        self.document.set_current_stage(index)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        index = self.tabAt(event.pos())
        if index >= 0:
            self.document.set_current_stage(index)
        if self.menu_actions:
            menu = QMenu(self)
            menu.addActions(list(self.menu_actions))
            menu.exec(event.globalPos())


class StackView(QGraphicsView):
    """Donor columns with draggable slice bars, and the output column.

    Drag over a donor's cells to add a slice, drag a bar to move it, drag its top or bottom
    end to resize it; each finished drag is one undo step, and the output follows the drag.
    Hover an output layer to see where it comes from; click it to select its slice.

    The scale (pixels per layer) is the readable fit of the donors to the view, or what the
    user zoomed to (Ctrl+wheel, Ctrl+plus/minus, Ctrl+0 to fit); edits never change it, nor
    the order of the columns. Items are kept across rebuilds and replaced only when they change.
    """

    sigStatus = Signal(str)  # what a drag would do, for the status bar
    sigScaleChanged = Signal(float)  # pixels per layer

    def __init__(self, document: RecipeDocument, live_plan: LivePlan, registry: DonorRegistry,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.live_plan, self.registry = document, live_plan, registry
        self.actions_ = SliceActions(document, self.num_layers, self)
        self.zoom_in = self._view_action("Zoom in", QKeySequence.StandardKey.ZoomIn, lambda: self.zoom_by(ZOOM_STEP))
        self.zoom_in.setShortcuts([QKeySequence(QKeySequence.StandardKey.ZoomIn), QKeySequence("Ctrl+=")])
        self.zoom_out = self._view_action("Zoom out", QKeySequence.StandardKey.ZoomOut,
                                          lambda: self.zoom_by(1 / ZOOM_STEP))
        self.zoom_fit = self._view_action("Fit to view", QKeySequence("Ctrl+0"), self.fit)
        self.zoom_actions = (self.zoom_in, self.zoom_out, self.zoom_fit)
        for action in (*self.actions_.actions, *self.actions_.nudges, *self.zoom_actions):
            self.addAction(action)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.setMouseTracking(True)
        self.columns: dict[str, DonorColumnItem] = {}
        self.bars: list[SliceBarItem] = []
        self.links: list[SliceLinkItem] = []
        self.output: OutputColumnItem | None = None
        self.layer_map: LayerMap | None = None  # the current stage's output layers, drawn by the output column
        self.geometry_: StackGeometry = StackGeometry(HEADER_H + MARGIN, LEGIBLE_CELL_H)
        self.ghosts: list[SliceBarItem] = []  # the new slice's sources while dragging over a column
        self.preview_stage: Stage | None = None  # the stage a drag would make, drawn while dragging
        self.analysis: AnalysisResult | None = None  # the Analysis tab's last result, drawn over the stacks
        self.strips: dict[str, DistanceStripItem] = {}  # per-layer distance beside each analysed donor
        self.similarity_gap: SimilarityGapItem | None = None  # the two donors' similarity between their columns
        self.tip = RangeTipItem(current_theme().canvas)  # the dragged range, next to the cursor
        self.tip.setVisible(False)
        self.scene().addItem(self.tip)
        self._zoom: float | None = None  # pixels per layer chosen by the user; None: the readable fit
        self._order: list[str] = []  # donor columns in the order they were first shown
        self._density: Density | None = None  # how narrow the columns are; None: decide at the next rebuild
        self._spacing = WIDE
        self._summary = ""
        self._specs: dict[object, tuple] = {}  # what each kept item was built from
        self._others: list[QGraphicsItem] = []  # the hint or the "no output plan" note
        self._creating = False
        self._rebuild_pending = False
        self._highlights: list[QGraphicsRectItem] = []
        self._selection_box: QGraphicsRectItem | None = None
        self._cursor = QPointF()  # last mouse position in the viewport, for autoscroll and the range tip
        self._autoscroll = QTimer(self)
        self._autoscroll.setInterval(AUTOSCROLL_MS)
        self._autoscroll.timeout.connect(self._autoscroll_step)
        document.recipe_changed.connect(self.rebuild)
        document.current_stage_changed.connect(self._new_layout)
        document.selection_changed.connect(self._on_selection)
        live_plan.plan_changed.connect(self.rebuild)
        registry.changed.connect(self._donors_changed)
        self.rebuild()

    def _view_action(self, text: str, shortcut: QKeySequence | QKeySequence.StandardKey,
                     slot: Callable[[], object]) -> QAction:
        action = QAction(text, self)
        action.setShortcut(shortcut)
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.setToolTip(f"{text} ({QKeySequence(shortcut).toString(QKeySequence.SequenceFormat.NativeText)})")
        action.triggered.connect(slot)
        return action

    # ---- building -------------------------------------------------------------------------

    @property
    def is_dragging(self) -> bool:
        return self._creating or any(bar.is_dragging for bar in self.bars)

    def column_names(self, stage: Stage) -> list[str]:
        """Donors shown for the stage (its models, earlier stages, unused donors), in a stable order.

        A column keeps its place while the recipe is edited: the order is that of first
        appearance in the recipe, then the donor list, as the columns were first shown.
        """
        recipe = self.document.recipe
        index = self.document.current_stage
        used = {m for s in recipe.stages for m in s.referenced_models}
        earlier = [other.name for i, other in enumerate(recipe.stages[:index])
                   if other.name and i in self.live_plan.stage_plans]
        shown = {*stage.referenced_models, *earlier, *(n for n in self.registry.refs if n not in used)}
        for name in [*(m for s in recipe.stages for m in s.referenced_models), *self.registry.refs, *earlier]:
            if name in shown and name not in self._order:
                self._order.append(name)
        return [n for n in self._order if n in shown]

    def _layers_of(self, name: str, stage: Stage) -> tuple[int, bool]:
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        if info is not None:
            return info.num_layers, True
        ends = [src.end for s in stage.slices or () for src in s.sources if src.model == name]
        return min(max([1, *ends]), MAX_LAYERS), False  # [0, 1000000000] must not draw a billion cells

    def _subtitle(self, name: str, layers: int, known: bool, density: Density) -> str:
        """What is under a column's name; narrow columns leave out the family, so every one reads alike."""
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        if info is not None and info.kind == "stage":
            return f"{layers} layers · stage output"
        if info is not None:
            return f"{layers} layers · {info.family}" if density == "wide" else f"{layers} layers"
        if any(f.code == "unknown-stage" and f.fix is not None and f.fix.args[0] == name
               for f in self.live_plan.findings):
            return "stage name? — see Problems"  # a misspelt stage, not a donor to map
        if name in self.registry.errors:
            return "not found — map it"
        return "inspecting…" if name in self.registry.refs or not known else "no donor"

    def _plan_layers(self, stage: Stage) -> LayerMap | None:
        """The output layers of ``stage`` (None while a donor is unknown or the stage is broken)."""
        donors = {**self.live_plan.known_donors, **self.registry.donors}
        try:
            return plan_layers(stage, donors)
        except Exception:  # noqa: BLE001 - a recipe being edited may be broken in any way; validation says how
            return None

    def _available(self) -> tuple[float, float]:
        """Room for the stacks: the view less its frame and scroll bars (so they never change the fit)."""
        frame = 2 * self.frameWidth()
        bar = self.style().pixelMetric(self.style().PixelMetric.PM_ScrollBarExtent)
        return max(100.0, self.width() - frame - bar), max(100.0, self.height() - frame - bar)

    def _fit_cell_h(self, tallest: int, least: float) -> float:
        room = self._available()[1] - HEADER_H - 2 * MARGIN - 4
        return max(least, min(MAX_CELL_H, room / max(1, tallest)))

    def _cell_h(self, layers: dict[str, tuple[int, bool]]) -> float:
        """The user's zoom, else the readable fit of the known donors (never the output, which edits change)."""
        if self._zoom is not None:
            return self._zoom
        tallest = max((n for n, known in layers.values() if known), default=DEFAULT_DONOR_LAYERS)
        return self._fit_cell_h(tallest, LEGIBLE_CELL_H)

    def _fitting_density(self, names: list[str], lanes: dict[str, int], gaps: dict[str, float]) -> Density:
        """The widest columns with which the stacks need no horizontal scroll bar (else the narrowest)."""
        room = self._available()[0]
        for density in DENSITIES[:-1]:
            if self._stacks_width(names, lanes, gaps, density) <= room:
                return density
        return DENSITIES[-1]

    def _stacks_width(self, names: list[str], lanes: dict[str, int], gaps: dict[str, float], density: Density) -> float:
        """The scene's width at ``density``: what :meth:`rebuild` lays out and :meth:`_update_scene_rect` covers."""
        space = SPACING[density]
        columns = sum(column_width(self._title(n), lanes[n], density) + gaps.get(n, space.column_gap) for n in names)
        return 2 * MARGIN + columns - space.column_gap + space.output_gap + INDEX_GUTTER + OUTPUT_W + space.right

    def _title(self, name: str) -> str:
        """The donor's last name part; a MODEL+LORA donor's model part, marked ``+LoRA``."""
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        lora = info.adapter is not None if info is not None else "+" in name
        model = name.partition("+")[0] if lora else name
        short = model.rstrip("/").split("/")[-1] or model
        return f"{short} +LoRA" if lora else short

    def _new_layout(self, *_: object) -> None:
        """Another stage or another recipe: columns in their natural order, widths decided again."""
        self._order, self._density = [], None
        self.rebuild()

    def _donors_changed(self, *_: object) -> None:
        self._density = None
        self.rebuild()

    def rebuild(self, *_: object) -> None:
        """Bring every item up to date with the document and the live plan (never during a drag)."""
        if self.is_dragging:
            self._rebuild_pending = True
            return
        self._rebuild_pending = False
        self._clear_transient()
        stage = self.document.stage
        names = self.column_names(stage)
        theme = current_theme().canvas
        self.setBackgroundBrush(QBrush(theme.background))
        self.tip.colors = theme
        if not names:
            self._sync_columns({}, theme, {})
            self._sync_bars([], theme)
            self._set_output(None, theme, 0.0)
            self._show_hint(theme)
            self.layer_map = None
            return
        layers = {n: self._layers_of(n, stage) for n in names}
        cell_h = self._cell_h(layers)
        if cell_h != self.geometry_.cell_h:
            self.sigScaleChanged.emit(cell_h)
        self.geometry_ = StackGeometry(HEADER_H + MARGIN, cell_h)
        self.layer_map = self._plan_layers(stage)
        stage_plan = self.live_plan.stage_plan(self.document.current_stage)
        if self.layer_map is None:
            self._summary = ""
        elif stage_plan is not None and stage_plan.layers == self.layer_map.layers:
            self._summary = plan_summary(stage_plan)
        else:
            self._summary = f"{self.layer_map.num_layers} layers"
        bars = self._bar_specs(stage, names, layers)
        lanes = {n: max([1, *(spec[-1] + 1 for spec in bars if spec[2] == n)]) for n in names}
        gaps = widened_gaps(self.analysis, names, {n: count for n, (count, known) in layers.items() if known})
        if self._density is None:  # decided again only on a resize, new donors or another stage
            self._density = self._fitting_density(names, lanes, gaps)
        density = self._density
        space = self._spacing = SPACING[density]
        usage = {u.model: u.counts for u in self.layer_map.donor_usage} if self.layer_map else {}
        x = self._sync_columns({n: (layers[n], lanes[n], usage.get(n), density) for n in names}, theme, gaps,
                               space.column_gap)
        self._sync_bars(bars, theme)
        self._draw_links(theme)
        after = x - space.column_gap + space.output_gap  # where the output's layer numbers start
        self._set_output(self.layer_map, theme, after + INDEX_GUTTER)
        self._sync_overlay()
        if self.layer_map is None and self.live_plan.error and stage.slices:
            note = QGraphicsTextItem(f"No output plan yet: {self.live_plan.error}")
            note.setTextWidth(NOTE_W)  # wrapped: a long reason must not widen the whole view
            note.setDefaultTextColor(theme.muted_text)
            note.setPos(after, self.geometry_.top)
            self.scene().addItem(note)
            self._others.append(note)
        self._update_scene_rect()
        self.update_selection()

    def _clear_transient(self) -> None:
        for item in [*self._others, *self._highlights]:
            self.scene().removeItem(item)
        self._others, self._highlights = [], []

    def _show_hint(self, theme: CanvasColors) -> None:
        hint = QGraphicsSimpleTextItem("Add a donor on the left, or open a recipe —\n"
                                       "then drag over a donor's layers to create a slice.")
        hint.setBrush(theme.muted_text)
        self.scene().addItem(hint)
        self._others.append(hint)
        self.scene().setSceneRect(hint.boundingRect().adjusted(-20, -40, 20, 40))

    def _sync_columns(self, columns: dict[str, tuple[tuple[int, bool], int, tuple[int, ...] | None, Density]],
                      theme: CanvasColors, gaps: dict[str, float], gap: float = WIDE.column_gap) -> float:
        """Keep, replace or drop donor columns ``gap`` apart (``gaps``: a wider gap after some); returns the x
        after the last one."""
        for name in [n for n in self.columns if n not in columns]:
            self._drop(self.columns.pop(name))
        x = MARGIN
        for name, ((count, known), lanes, counts, density) in columns.items():
            info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
            spec = (self._subtitle(name, count, known, density), count, known,
                    self.live_plan.donor_color(name).rgba(), lanes, self.geometry_, theme,
                    self._column_tooltip(name, info), density)
            column = self.columns.get(name)
            if column is None or self._specs.get(column) != spec:
                if column is not None:
                    self._drop(column)
                column = self._new_column(name, spec, counts, theme)
            column.set_counts(counts)
            column.setPos(x, 0)
            x += column.width + gaps.get(name, gap)
        self.columns = {n: self.columns[n] for n in columns}
        return x

    def _new_column(self, name: str, spec: tuple, counts: tuple[int, ...] | None,
                    theme: CanvasColors) -> DonorColumnItem:
        subtitle, count, known, _, lanes, geometry, _, tooltip, density = spec
        column = DonorColumnItem(name, self._title(name), subtitle, count, known, counts,
                                 self.live_plan.donor_color(name), lanes, geometry, theme, tooltip, density)
        self.scene().addItem(column)
        self._specs[column] = spec
        self.columns[name] = column
        column.sigCreateChanged.connect(lambda s, e, c=column: self._preview_create(c, s, e))
        column.sigCreateFinished.connect(lambda s, e, c=column: self._finish_create(c, s, e))
        column.sigCreateCancelled.connect(self._cancel_create)
        return column

    def _drop(self, item: QGraphicsItem) -> None:
        self._specs.pop(item, None)
        self.scene().removeItem(item)

    def _bar_specs(self, stage: Stage, names: list[str], layers: dict[str, tuple[int, bool]]) -> list[tuple]:
        """(slice, source, model, range, limit, linked, lane) of every source shown."""
        specs = []
        sources = [(si, ki, src) for si, s in enumerate(stage.slices or ()) for ki, src in enumerate(s.sources)]
        for name in names:
            own = [(si, ki, src) for si, ki, src in sources if src.model == name]
            count, known = layers[name]
            for (si, ki, src), lane in zip(own, _assign_lanes([src.layer_range for _, _, src in own])):
                linked = tuple(f"{o.model} {layer_range_label(*o.layer_range)}"
                               for k, o in enumerate((stage.slices or ())[si].sources) if k != ki)
                specs.append((si, ki, name, src.layer_range, count if known else None, linked, lane))
        return specs

    def _sync_bars(self, specs: list[tuple], theme: CanvasColors) -> None:
        """Keep the bars that did not change, replace the others."""
        kept = {(b.slice_index, b.source_index): b for b in self.bars}
        self.bars = []
        for si, ki, name, layer_range, limit, linked, lane in specs:
            column = self.columns[name]
            x = column.x() + column.lane_x(lane)
            spec = (name, layer_range, limit, linked, column.color.rgba(), self.geometry_, theme, x, column.lane_w)
            bar = kept.pop((si, ki), None)
            if bar is None or self._specs.get(bar) != spec:
                if bar is not None:
                    self._drop(bar)
                bar = self._new_bar(si, ki, spec, theme)
            self.bars.append(bar)
        for bar in kept.values():
            self._drop(bar)

    def _new_bar(self, si: int, ki: int, spec: tuple, theme: CanvasColors) -> SliceBarItem:
        name, layer_range, limit, linked, _, geometry, _, x, lane_w = spec
        bar = SliceBarItem(si, ki, name, layer_range, limit, self.columns[name].color, geometry, theme, x,
                           width=lane_w - 4, linked=linked)
        self.scene().addItem(bar)
        self._specs[bar] = spec
        bar.sigPressed.connect(lambda b=bar: self.document.select_slice(b.slice_index))
        bar.sigChanged.connect(lambda s, e, b=bar: self._preview_bar(b, s, e))
        bar.sigChangeFinished.connect(lambda old, new, b=bar: self._finish_bar(b, old, new))
        bar.sigContextMenu.connect(lambda pos, b=bar: self._bar_menu(b, pos))
        return bar

    def _set_output(self, layer_map: LayerMap | None, theme: CanvasColors, x: float) -> None:
        """Show ``layer_map`` in the output column (kept when only its layers change)."""
        if layer_map is None:
            if self.output is not None:
                self._drop(self.output)
                self.output = None
            return
        stage = self.document.stage
        colors = {n: self.live_plan.donor_color(n) for n in self.columns}
        spec = (tuple((n, c.rgba()) for n, c in colors.items()), self.geometry_, theme,
                "Output" if not stage.name else stage.name.split("/")[-1])
        if self.output is not None and self._specs.get(self.output) == spec:
            self.output.set_layer_map(layer_map, self._summary)
        else:
            if self.output is not None:
                self._drop(self.output)
            self.output = OutputColumnItem(layer_map, self._summary, colors, self.geometry_, theme, spec[-1])
            self.scene().addItem(self.output)
            self._specs[self.output] = spec
            self.output.sigHovered.connect(self._hover_output)
            self.output.sigClicked.connect(self.document.select_slice)
        self.output.setPos(x, 0)

    def set_analysis(self, result: AnalysisResult | None) -> None:
        """Draw ``result``'s layer distances beside its donors' columns and colour the seams it measured."""
        self.analysis = result
        for strip in self.strips.values():
            self._drop(strip)
        self.strips = {}
        if self.similarity_gap is not None:
            self._drop(self.similarity_gap)
            self.similarity_gap = None
        self._density = None  # the heatmap's gap comes or goes: widths are decided again
        self.rebuild()

    def _sync_overlay(self) -> None:
        """Keep the strips beside their columns (made once per result and scale) and the seam colours."""
        if self.output is not None:
            self.output.set_seam_marks(seam_marks(self.analysis, self.layer_map))
        result = self.analysis
        if result is None:
            return  # no analysis: no work per edit (set_analysis dropped the strips)
        distances = result.layer_distance
        for name in [n for n in self.strips if n not in self.columns or n not in distances]:
            self._drop(self.strips.pop(name))
        for name, column in self.columns.items():
            if name not in distances or len(distances[name]) != column.num_layers:
                continue
            strip = self.strips.get(name)
            if strip is None or strip.geometry != self.geometry_:
                if strip is not None:
                    self._drop(strip)
                strip = self.strips[name] = DistanceStripItem(name, distances[name], strip_top(result),
                                                              self.geometry_)
                self.scene().addItem(strip)
            strip.setPos(column.x() + column.width + STRIP_GAP, 0)
        self._sync_similarity_gap(result)

    def _sync_similarity_gap(self, result: AnalysisResult) -> None:
        """The similarity heatmap in the gap right of the left one of its donors (made once per result and scale)."""
        donors = gap_donors(result, self.columns)
        gap = self.similarity_gap
        if gap is not None and (donors is None or gap.key != (*donors, self.geometry_)):
            self._drop(gap)
            gap = self.similarity_gap = None
        if donors is None:
            return
        if gap is None:
            gap = self.similarity_gap = SimilarityGapItem(*donors, oriented(result, donors[0]), self.geometry_,
                                                          heatmap_width(self.columns[donors[1]].num_layers))
            self.scene().addItem(gap)
        left = self.columns[donors[0]]
        gap.setPos(left.x() + left.width, 0)

    def _update_scene_rect(self) -> None:
        """The scene covers every column at its full height (a drag's longer output included)."""
        g = self.geometry_
        tallest = max([c.num_layers for c in self.columns.values()] + [self.output.num_layers if self.output else 0])
        right = max([c.x() + c.width for c in self.columns.values()] +
                    [self.output.x() + OUTPUT_W + self._spacing.right if self.output else 0] +
                    [i.x() + NOTE_W for i in self._others])
        rect = QRectF(0, 0, right + MARGIN, g.y(tallest) + 2 * MARGIN)
        if rect != self.sceneRect():
            self.scene().setSceneRect(rect)

    def _draw_links(self, theme: CanvasColors) -> None:
        """A dashed line joins the sources of one slice, column to column, at their tops."""
        for link in self.links:
            self.scene().removeItem(link)
        self.links = []
        by_slice: dict[int, list[SliceBarItem]] = {}
        for bar in self.bars:
            by_slice.setdefault(bar.slice_index, []).append(bar)
        pen = QPen(theme.muted_text, 1.2, Qt.PenStyle.DashLine)
        for bars in by_slice.values():
            bars.sort(key=lambda b: b.x())
            for left, right in zip(bars, bars[1:]):
                link = SliceLinkItem(left, right, pen)
                self.scene().addItem(link)
                self.links.append(link)

    def _column_tooltip(self, name: str, info: DonorInfo | None) -> str:
        if info is None:
            error = self.registry.errors.get(name)
            return f"{name}\n{error}" if error else f"{name}\n(no donor information yet)"
        ref = self.registry.refs.get(name)
        source = f"\nfrom {ref}" if ref and ref != name else ""
        lora = "".join(f"\n{line}" for line in adapter_facts(info.adapter).describe()) if info.adapter else ""
        return (f"{name}{source}\n{info.architecture}, {info.num_layers} layers, hidden {info.hidden_size}{lora}\n"
                "Drag over its layers to add a slice")

    # ---- selection and hover --------------------------------------------------------------

    def _on_selection(self, *_: object) -> None:
        self.update_selection()
        selection = self.document.selection
        if selection is not None and not self.is_dragging:
            self.ensure_slice_visible(selection[1])

    def ensure_slice_visible(self, slice_index: int) -> None:
        """Scroll to the slice's first bar when none of it is in view."""
        bar = self.slice_bar(slice_index)
        if bar is None:
            return
        rect = bar.sceneBoundingRect()
        if not self.mapToScene(self.viewport().rect()).boundingRect().intersects(rect):
            self.ensureVisible(rect.adjusted(0, 0, 0, min(0.0, 3 * self.geometry_.cell_h - rect.height())), 20, 40)

    def update_selection(self, *_: object) -> None:
        selection = self.document.selection
        selected = selection[1] if selection and selection[0] == self.document.current_stage else None
        for bar in self.bars:
            bar.set_selected(bar.slice_index == selected)
        if self._selection_box is not None:
            self.scene().removeItem(self._selection_box)
            self._selection_box = None
        if self.output is not None and selected is not None:
            rows = [layer.index for layer in self.output.layer_map.layers if layer.slice_index == selected]
            if rows:
                rect = self.output.cell_rect(rows[0]).united(self.output.cell_rect(rows[-1]))
                box = QGraphicsRectItem(self.output.mapRectToScene(rect).adjusted(-3, -1, 3, 1))
                box.setPen(QPen(current_theme().canvas.selection, 2.5))
                box.setZValue(25)
                self.scene().addItem(box)
                self._selection_box = box

    def _hover_output(self, index: int) -> None:
        for item in self._highlights:
            self.scene().removeItem(item)
        self._highlights = []
        if index < 0 or self.output is None:
            return
        self.output.setToolTip(self.output_hover_text(index))
        g = self.geometry_
        pen = QPen(current_theme().canvas.highlight, 2.5)
        rects = [self.output.mapRectToScene(self.output.cell_rect(index))]
        for source in self.output.layer_map.layers[index].sources:
            column = self.columns.get(source.model)
            if column is not None:
                rects.append(QRectF(column.x(), g.y(source.layer), column.width, g.cell_h))
        for rect in rects:
            item = QGraphicsRectItem(rect.adjusted(-1, -1, 1, 1))
            item.setPen(pen)
            item.setZValue(30)
            self.scene().addItem(item)
            self._highlights.append(item)

    def output_hover_text(self, index: int) -> str:
        """The output layer's sources and the value every curve rule gives there (once planned)."""
        assert self.output is not None
        text = self.output.layer_text(index)
        plan = self.live_plan.stage_plan(self.document.current_stage)
        shown = self.output.layer_map.layers
        if plan is None or index >= plan.num_layers or plan.layers[index] != shown[index]:
            return text  # a drag's preview, or the plan is not made yet
        values = [f"{v.parameter} ({v.rule}): {v.value:g}"
                  for v in values_at_layer(self.document.stage, plan, index)]
        return "\n".join([text, *values])

    def source_cell_highlighted(self, model: str, layer: int) -> bool:
        """Whether the hover highlight marks ``model``'s ``layer`` (for tests and tooltips)."""
        column = self.columns.get(model)
        if column is None:
            return False
        target = QRectF(column.x(), self.geometry_.y(layer), column.width, self.geometry_.cell_h)
        return any(item.rect().adjusted(1, 1, -1, -1) == target for item in self._highlights)

    # ---- drags ----------------------------------------------------------------------------

    def num_layers(self, name: str) -> int | None:
        """Layers of donor ``name`` (a stage output too), None while unknown."""
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        return info.num_layers if info else None

    def _show_preview(self, stage: Stage | None, layer_range: tuple[int, int] | None = None) -> None:
        """The output and the donors' tints as ``stage`` would make them (the document's when None),
        and the dragged ``layer_range`` next to the cursor."""
        layer_map = self.layer_map if stage is None else self._plan_layers(stage)
        if layer_map is not None and self.output is not None:
            summary = self._summary if stage is None else f"{layer_map.num_layers} layers"
            self.output.set_layer_map(layer_map, summary)
            self.output.set_seam_marks(seam_marks(self.analysis, layer_map))
        usage = {u.model: u.counts for u in layer_map.donor_usage} if layer_map else {}
        for name, column in self.columns.items():
            column.set_counts(usage.get(name))
        self._update_scene_rect()
        if layer_range is None:
            self.tip.setVisible(False)
        else:
            self.tip.show_range(*layer_range, self.mapToScene(self._cursor.toPoint()))

    def _create_edit(self, column: DonorColumnItem, start: int, end: int) -> StageEdit | None:
        """The edit a drag over ``column``'s layers makes; None for a stage of whole models."""
        stage = self.document.stage
        if stage.models is not None:  # mergekit takes slices or models, never both
            return None
        models = (column.name, *slice_edits.linked_models(stage, column.name, tuple(self.columns)))
        layers = {m: n for m in models if (n := self.num_layers(m)) is not None}
        return lambda s: slice_edits.add_linked_slice(s, models, start, end, num_layers=layers)

    def _preview_create(self, column: DonorColumnItem, start: int, end: int) -> None:
        """Ghost bars where the new slice's sources would be: the edit applied to a scratch stage."""
        self._creating = True
        edit = self._create_edit(column, start, end)
        self.preview_stage = edit(self.document.stage) if edit else None
        dragged = (SliceSource(column.name, (start, end)),)  # all a stage of whole models shows
        added = self.preview_stage.slices if self.preview_stage else None
        sources = added[-1].sources if added else dragged
        if not self.ghosts:
            for source in sources:
                owner = self.columns[source.model]
                ghost = SliceBarItem(-1, 0, owner.name, source.layer_range, None, owner.color, self.geometry_,
                                     current_theme().canvas, owner.x() + owner.lane_x(0),
                                     width=owner.lanes * owner.lane_w - 4, ghost=True)
                self.scene().addItem(ghost)
                self.ghosts.append(ghost)
        for ghost, source in zip(self.ghosts, sources):
            ghost.set_range(source.layer_range)
        self._show_preview(self.preview_stage, (start, end))
        self.sigStatus.emit(f"New slice: {column.title}, {layer_range_label(start, end)} — release to add, "
                            "right-click to cancel")

    def _cancel_create(self) -> None:
        self._creating = False
        self.preview_stage = None
        for ghost in self.ghosts:
            self.scene().removeItem(ghost)
        self.ghosts = []
        self._end_drag()

    def _end_drag(self) -> None:
        self._autoscroll.stop()
        self.sigStatus.emit("")
        self._show_preview(None)
        if self._rebuild_pending:
            self.rebuild()

    def _finish_create(self, column: DonorColumnItem, start: int, end: int) -> None:
        edit = self._create_edit(column, start, end)
        self._cancel_create()
        if edit is None:
            self.sigStatus.emit("This stage merges whole models (models:); edit its YAML to use slices instead")
            return
        count = len(self.document.stage.slices or ())
        self.document.apply_to_stage(edit, f"Add slice ({column.title} {layer_range_label(start, end)})")
        self.document.select_slice(count)

    def _bar_edit(self, bar: SliceBarItem, layer_range: tuple[int, int]) -> StageEdit:
        """The edit dragging ``bar`` to ``layer_range`` makes (moving it, or resizing its slice)."""
        i, k, limit = bar.slice_index, bar.source_index, self.num_layers(bar.model)
        return lambda s: slice_edits.set_source_range(s, i, layer_range, source=k, num_layers=limit)

    def _preview_bar(self, bar: SliceBarItem, start: int, end: int) -> None:
        """Draw the slice as the edit would leave it, applied to a scratch stage, and the output with it."""
        preview = self._bar_edit(bar, (start, end))(self.document.stage)
        self.preview_stage = preview if preview != self.document.stage else None  # None: a cancelled drag
        sources = (preview.slices or ())[bar.slice_index].sources
        for other in self.bars:
            if other.slice_index == bar.slice_index:
                other.set_range(sources[other.source_index].layer_range)
        for link in self.links:
            if link.left.slice_index == bar.slice_index:
                link.follow()
        self._show_preview(self.preview_stage, (start, end) if bar.is_dragging else None)
        self.sigStatus.emit(f"Slice {bar.slice_index + 1}: {bar.model}, {layer_range_label(start, end)} "
                            f"[{start}, {end}]")

    def _finish_bar(self, bar: SliceBarItem, old: tuple[int, int], new: tuple[int, int]) -> None:
        self.preview_stage = None
        self._autoscroll.stop()
        self.tip.setVisible(False)
        self.sigStatus.emit("")
        verb = "Move" if new[1] - new[0] == old[1] - old[0] else "Resize"
        self.document.apply_to_stage(self._bar_edit(bar, new),
                                     f"{verb} slice {bar.slice_index + 1} to {layer_range_label(*new)}")
        if self._rebuild_pending:
            self.rebuild()

    def _bar_menu(self, bar: SliceBarItem, screen_pos: QPoint) -> None:
        self.document.select_slice(bar.slice_index)
        menu = QMenu(self)
        for action in self.actions_.actions:
            menu.addAction(action)
        models = [n for n in self.columns if n != bar.model]
        if models:
            sub = menu.addMenu("Take layers from")
            for name in models:
                sub.addAction(name, partial(self._set_model, bar, name))
        stage = self.document.stage
        sources = (stage.slices or ())[bar.slice_index].sources  # a bar stands for a slice's source
        spec = method_spec(stage.merge_method)
        addable = [n for n in self.columns if n not in {s.model for s in sources}]
        if spec is not None and spec.max_models != 1 and addable and \
                (spec.max_models is None or len(sources) < spec.max_models):
            sub = menu.addMenu("Add source from")
            for name in addable:
                sub.addAction(name, partial(self.add_source, bar.slice_index, name))
        if len(sources) > 1:
            menu.addAction("Remove source", partial(self.remove_source, bar.slice_index, bar.source_index))
        menu.exec(screen_pos)

    def add_source(self, slice_index: int, model: str) -> None:
        """Give a slice one more source, ``model`` at the slice's layer range."""
        limit = self.num_layers(model)
        self.document.apply_to_stage(lambda s: slice_edits.add_source(s, slice_index, model, num_layers=limit),
                                     f"Add source {model} to slice {slice_index + 1}")

    def remove_source(self, slice_index: int, source_index: int) -> None:
        model = (self.document.stage.slices or ())[slice_index].sources[source_index].model
        self.document.apply_to_stage(lambda s: slice_edits.remove_source(s, slice_index, source_index),
                                     f"Remove source {model} from slice {slice_index + 1}")

    def _set_model(self, bar: SliceBarItem, model: str) -> None:
        i, k, limit = bar.slice_index, bar.source_index, self.num_layers(model)
        self.document.apply_to_stage(lambda s: slice_edits.set_slice_model(s, i, model, source=k, num_layers=limit),
                                     f"Take slice {i + 1} from {model}")

    def _autoscroll_step(self) -> None:
        """While a drag holds the cursor near the top or bottom edge, scroll, and let the drag follow."""
        y, height = self._cursor.y(), self.viewport().height()
        depth = AUTOSCROLL_EDGE - y if y < AUTOSCROLL_EDGE else y - (height - AUTOSCROLL_EDGE)
        if not self.is_dragging or depth <= 0:
            self._autoscroll.stop()
            return
        step = int(min(40.0, max(4.0, depth / 2)))
        scroll = self.verticalScrollBar()
        before = scroll.value()
        scroll.setValue(before + (step if y > AUTOSCROLL_EDGE else -step))
        if scroll.value() != before:  # the cursor now points at other layers: tell the dragged item
            move = QMouseEvent(QEvent.Type.MouseMove, self._cursor, self.viewport().mapToGlobal(self._cursor),
                               Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
            QApplication.sendEvent(self.viewport(), move)

    # ---- zoom -----------------------------------------------------------------------------

    def set_scale(self, cell_h: float | None, anchor: float | None = None) -> None:
        """Show ``cell_h`` pixels per layer (None: the readable fit), keeping the layer at
        viewport height ``anchor`` (default: the middle) where it is."""
        anchor = self.viewport().height() / 2 if anchor is None else anchor
        layer = self.geometry_.layer_at(self.mapToScene(QPoint(0, int(anchor))).y())
        self._zoom = None if cell_h is None else max(MIN_ZOOM_CELL_H, min(MAX_ZOOM_CELL_H, cell_h))
        self.rebuild()
        top = self.geometry_.y(layer) - anchor
        self.verticalScrollBar().setValue(int(top - self.sceneRect().top()))

    def zoom_by(self, factor: float, anchor: float | None = None) -> None:
        self.set_scale(self.geometry_.cell_h * factor, anchor)

    def fit(self) -> None:
        """Every stack, the output's too, in the height of the view (layer numbers thinned out)."""
        tallest = max([c.num_layers for c in self.columns.values()] + [self.output.num_layers if self.output else 1])
        self.set_scale(self._fit_cell_h(tallest, MIN_ZOOM_CELL_H))

    # ---- Qt overrides ---------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if event.oldSize() != event.size():
            self._density = None
            self.rebuild()

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            steps = event.angleDelta().y() / 120
            if steps:
                self.zoom_by(ZOOM_STEP ** steps, event.position().y())
            event.accept()
            return
        super().wheelEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._cursor = event.position()
        item = self.itemAt(event.position().toPoint())
        if event.button() == Qt.MouseButton.LeftButton and not isinstance(item, (SliceBarItem, OutputColumnItem)):
            self.document.select_slice(None)  # a click beside the slices clears the selection
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self._cursor = event.position()
        super().mouseMoveEvent(event)
        y = self._cursor.y()
        near_edge = y < AUTOSCROLL_EDGE or y > self.viewport().height() - AUTOSCROLL_EDGE
        if self.is_dragging and near_edge and not self._autoscroll.isActive():
            self._autoscroll.start()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        super().mouseReleaseEvent(event)
        if not self.is_dragging:
            self._autoscroll.stop()
            self.tip.setVisible(False)

    def slice_bar(self, slice_index: int, source_index: int = 0) -> SliceBarItem | None:
        return next((b for b in self.bars if b.slice_index == slice_index and b.source_index == source_index), None)

    def drawBackground(self, painter: QPainter, rect: QRectF | QRect) -> None:
        painter.fillRect(rect, current_theme().canvas.background)
