"""The stack designer: donors' layer stacks with their slices, and the output stack beside them."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QPoint, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction, QBrush, QContextMenuEvent, QKeySequence, QMouseEvent, QPainter, QPen, QResizeEvent,
)
from PySide6.QtWidgets import (
    QGraphicsRectItem, QGraphicsScene, QGraphicsSimpleTextItem, QGraphicsTextItem, QGraphicsView, QMenu, QTabBar,
    QWidget,
)

from merger_gui.core import slice_edits
from merger_gui.core.donor import DonorInfo
from merger_gui.core.donor import MAX_LAYERS
from merger_gui.core.methods import method_spec
from merger_gui.core.recipe import SliceSource, Stage
from merger_gui.core.slice_edits import layer_range_label

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .live_plan import LivePlan
from .output_stack import INDEX_GUTTER, OutputColumnItem
from .slice_items import HEADER_H, LANE_W, DonorColumnItem, SliceBarItem, SliceLinkItem, StackGeometry
from .theme import CanvasColors, current_theme

COLUMN_GAP = 22.0
OUTPUT_GAP = 40.0
MARGIN = 12.0
MIN_CELL_H, MAX_CELL_H = 3.0, 22.0
NOTE_W = 180.0  # width of the "no output plan" note beside the donors

StageEdit = Callable[[Stage], Stage]


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
    """Delete / duplicate / move up / move down of the selected slice, as shared ``QAction`` s."""

    def __init__(self, document: RecipeDocument, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.delete = self._action("Delete slice", QKeySequence.StandardKey.Delete, self.delete_selected)
        self.duplicate = self._action("Duplicate slice", QKeySequence("Ctrl+D"), self.duplicate_selected)
        self.move_up = self._action("Move slice up", QKeySequence("Alt+Up"), lambda: self.move_selected(-1))
        self.move_down = self._action("Move slice down", QKeySequence("Alt+Down"), lambda: self.move_selected(1))
        self.actions = (self.move_up, self.move_down, self.duplicate, self.delete)
        self.delete.setToolTip("Remove the selected slice from the output (Delete)")
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
    end to resize it; each finished drag is one undo step. Hover an output layer to see
    where it comes from; click it to select its slice.
    """

    sigStatus = Signal(str)  # what a drag would do, for the status bar

    def __init__(self, document: RecipeDocument, live_plan: LivePlan, registry: DonorRegistry,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.live_plan, self.registry = document, live_plan, registry
        self.actions_ = SliceActions(document, self)
        for action in self.actions_.actions:
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
        self.geometry_: StackGeometry = StackGeometry(HEADER_H + MARGIN, 10.0)
        self.ghosts: list[SliceBarItem] = []  # the new slice's sources while dragging over a column
        self.preview_stage: Stage | None = None  # the stage a drag would make, drawn while dragging
        self._creating = False
        self._rebuild_pending = False
        self._highlights: list[QGraphicsRectItem] = []
        self._selection_box: QGraphicsRectItem | None = None
        document.recipe_changed.connect(self.rebuild)
        document.current_stage_changed.connect(self.rebuild)
        document.selection_changed.connect(self.update_selection)
        live_plan.plan_changed.connect(self.rebuild)
        registry.changed.connect(self.rebuild)
        self.rebuild()

    # ---- building -------------------------------------------------------------------------

    @property
    def is_dragging(self) -> bool:
        return self._creating or any(bar.is_dragging for bar in self.bars)

    def column_names(self, stage: Stage) -> list[str]:
        """Donors shown for the stage: its models, then earlier stages and unused donors."""
        recipe = self.document.recipe
        index = self.document.current_stage
        names = list(stage.referenced_models)
        used = {m for s in recipe.stages for m in s.referenced_models}
        for i, other in enumerate(recipe.stages[:index]):
            if other.name and other.name not in names and i in self.live_plan.stage_plans:
                names.append(other.name)
        names += [n for n in self.registry.refs if n not in names and n not in used]
        return names

    def _layers_of(self, name: str, stage: Stage) -> tuple[int, bool]:
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        if info is not None:
            return info.num_layers, True
        ends = [src.end for s in stage.slices or () for src in s.sources if src.model == name]
        return min(max([1, *ends]), MAX_LAYERS), False  # [0, 1000000000] must not draw a billion cells

    def _subtitle(self, name: str, layers: int, known: bool) -> str:
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        if info is not None:
            return f"{layers} layers · {info.family}" if info.kind != "stage" else f"{layers} layers · stage output"
        if name in self.registry.errors:
            return "not found — map it"
        return "inspecting…" if name in self.registry.refs or not known else "no donor"

    def rebuild(self, *_: object) -> None:
        """Recreate every item from the document and the live plan (never during a drag)."""
        if self.is_dragging:
            self._rebuild_pending = True
            return
        self._rebuild_pending = False
        self._build(compact=False)
        if self.sceneRect().width() > self.viewport().width():
            self._build(compact=True)  # narrower columns before shrinking everything
        # Still too wide: shrink to fit rather than hide the output behind a scroll bar.
        scale = min(1.0, self.viewport().width() / max(1.0, self.sceneRect().width()))
        self.resetTransform()
        self.scale(scale, scale)
        self.update_selection()

    def _build(self, compact: bool) -> None:
        theme = current_theme().canvas
        scene = self.scene()
        scene.clear()
        self.columns, self.bars, self.links, self.output, self.ghosts = {}, [], [], None, []
        self._highlights, self._selection_box = [], None
        self.setBackgroundBrush(QBrush(theme.background))
        stage = self.document.stage
        stage_plan = self.live_plan.stage_plan(self.document.current_stage)
        names = self.column_names(stage)
        if not names:
            hint = QGraphicsSimpleTextItem("Add a donor on the left, or open a recipe —\n"
                                           "then drag over a donor's layers to create a slice.")
            hint.setBrush(theme.muted_text)
            scene.addItem(hint)
            scene.setSceneRect(hint.boundingRect().adjusted(-20, -40, 20, 40))
            return
        layers = {n: self._layers_of(n, stage) for n in names}
        usage = {u.model: u.counts for u in stage_plan.donor_usage} if stage_plan else {}
        sources = [(si, ki, src) for si, s in enumerate(stage.slices or ()) for ki, src in enumerate(s.sources)]
        out_layers = stage_plan.num_layers if stage_plan else 0
        tallest = max([out_layers, *(n for n, _ in layers.values())], default=1)
        available = max(100.0, self.viewport().height() - HEADER_H - 2 * MARGIN - 4)
        cell_h = max(MIN_CELL_H, min(MAX_CELL_H, available / max(1, tallest)))
        self.geometry_ = g = StackGeometry(HEADER_H + MARGIN, cell_h)
        x = MARGIN
        for name in names:
            own = [(si, ki, src) for si, ki, src in sources if src.model == name]
            lanes = _assign_lanes([src.layer_range for _, _, src in own])
            count, known = layers[name]
            info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
            column = DonorColumnItem(
                name, name.rstrip("/").split("/")[-1], self._subtitle(name, count, known), count, known,
                usage.get(name), self.live_plan.donor_color(name), max([1, *(lane + 1 for lane in lanes)]), g, theme,
                self._column_tooltip(name, info), compact)
            column.setPos(x, 0)
            scene.addItem(column)
            self.columns[name] = column
            column.sigCreateChanged.connect(lambda s, e, c=column: self._preview_create(c, s, e))
            column.sigCreateFinished.connect(lambda s, e, c=column: self._finish_create(c, s, e))
            column.sigCreateCancelled.connect(self._cancel_create)
            for (si, ki, src), lane in zip(own, lanes):
                linked = tuple(f"{o.model} {layer_range_label(*o.layer_range)}"
                               for k, o in enumerate(stage.slices[si].sources) if k != ki)
                bar = SliceBarItem(si, ki, name, src.layer_range, count if known else None,
                                   self.live_plan.donor_color(name), g, theme, x + column.lane_x(lane), linked=linked)
                scene.addItem(bar)
                self.bars.append(bar)
                bar.sigPressed.connect(lambda b=bar: self.document.select_slice(b.slice_index))
                bar.sigChanged.connect(lambda s, e, b=bar: self._preview_bar(b, s, e))
                bar.sigChangeFinished.connect(lambda old, new, b=bar: self._finish_bar(b, old, new))
                bar.sigContextMenu.connect(lambda pos, b=bar: self._bar_menu(b, pos))
            x += column.width + COLUMN_GAP
        self._draw_links(theme)
        if stage_plan is not None:
            self.output = OutputColumnItem(stage_plan, {n: self.live_plan.donor_color(n) for n in names}, g, theme,
                                           "Output" if not stage.name else stage.name.split("/")[-1])
            self.output.setPos(x - COLUMN_GAP + OUTPUT_GAP + INDEX_GUTTER, 0)
            scene.addItem(self.output)
            self.output.sigHovered.connect(self._hover_output)
            self.output.sigClicked.connect(self.document.select_slice)
        elif self.live_plan.error and stage.slices:
            note = QGraphicsTextItem(f"No output plan yet: {self.live_plan.error}")
            note.setTextWidth(NOTE_W)  # wrapped: a long reason must not shrink the whole view
            note.setDefaultTextColor(theme.muted_text)
            note.setPos(x - COLUMN_GAP + OUTPUT_GAP, g.top)
            scene.addItem(note)
        scene.setSceneRect(scene.itemsBoundingRect().adjusted(-MARGIN, -MARGIN / 2, MARGIN, MARGIN))

    def _draw_links(self, theme: CanvasColors) -> None:
        """A dashed line joins the sources of one slice, column to column, at their tops."""
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
        return (f"{name}{source}\n{info.architecture}, {info.num_layers} layers, hidden {info.hidden_size}\n"
                "Drag over its layers to add a slice")

    # ---- selection and hover --------------------------------------------------------------

    def update_selection(self, *_: object) -> None:
        selection = self.document.selection
        selected = selection[1] if selection and selection[0] == self.document.current_stage else None
        for bar in self.bars:
            bar.set_selected(bar.slice_index == selected)
        if self._selection_box is not None:
            self.scene().removeItem(self._selection_box)
            self._selection_box = None
        if self.output is not None and selected is not None:
            rows = [layer.index for layer in self.output.stage_plan.layers if layer.slice_index == selected]
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
        g = self.geometry_
        pen = QPen(current_theme().canvas.highlight, 2.5)
        rects = [self.output.mapRectToScene(self.output.cell_rect(index))]
        for source in self.output.stage_plan.layers[index].sources:
            column = self.columns.get(source.model)
            if column is not None:
                rects.append(QRectF(column.x(), g.y(source.layer), column.width, g.cell_h))
        for rect in rects:
            item = QGraphicsRectItem(rect.adjusted(-1, -1, 1, 1))
            item.setPen(pen)
            item.setZValue(30)
            self.scene().addItem(item)
            self._highlights.append(item)

    def source_cell_highlighted(self, model: str, layer: int) -> bool:
        """Whether the hover highlight marks ``model``'s ``layer`` (for tests and tooltips)."""
        column = self.columns.get(model)
        if column is None:
            return False
        target = QRectF(column.x(), self.geometry_.y(layer), column.width, self.geometry_.cell_h)
        return any(item.rect().adjusted(1, 1, -1, -1) == target for item in self._highlights)

    # ---- drags ----------------------------------------------------------------------------

    def _num_layers(self, name: str) -> int | None:
        info = self.live_plan.known_donors.get(name) or self.registry.donor(name)
        return info.num_layers if info else None

    def _create_edit(self, column: DonorColumnItem, start: int, end: int) -> StageEdit | None:
        """The edit a drag over ``column``'s layers makes; None for a stage of whole models."""
        stage = self.document.stage
        if stage.models is not None:  # mergekit takes slices or models, never both
            return None
        models = (column.name, *slice_edits.linked_models(stage, column.name, tuple(self.columns)))
        layers = {m: n for m in models if (n := self._num_layers(m)) is not None}
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
                                     width=owner.lanes * LANE_W - 4, ghost=True)
                self.scene().addItem(ghost)
                self.ghosts.append(ghost)
        for ghost, source in zip(self.ghosts, sources):
            ghost.set_range(source.layer_range)
        self.sigStatus.emit(f"New slice: {column.title}, {layer_range_label(start, end)} — release to add, "
                            "right-click to cancel")

    def _cancel_create(self) -> None:
        self._creating = False
        self.preview_stage = None
        for ghost in self.ghosts:
            self.scene().removeItem(ghost)
        self.ghosts = []
        self.sigStatus.emit("")
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
        i, k, limit = bar.slice_index, bar.source_index, self._num_layers(bar.model)
        return lambda s: slice_edits.set_source_range(s, i, layer_range, source=k, num_layers=limit)

    def _preview_bar(self, bar: SliceBarItem, start: int, end: int) -> None:
        """Draw the slice as the edit would leave it, applied to a scratch stage."""
        preview = self._bar_edit(bar, (start, end))(self.document.stage)
        self.preview_stage = preview if preview != self.document.stage else None  # None: a cancelled drag
        sources = (preview.slices or ())[bar.slice_index].sources
        for other in self.bars:
            if other.slice_index == bar.slice_index:
                other.set_range(sources[other.source_index].layer_range)
        for link in self.links:
            if link.left.slice_index == bar.slice_index:
                link.follow()
        self.sigStatus.emit(f"Slice {bar.slice_index + 1}: {bar.model}, {layer_range_label(start, end)} "
                            f"[{start}, {end}]")

    def _finish_bar(self, bar: SliceBarItem, old: tuple[int, int], new: tuple[int, int]) -> None:
        self.preview_stage = None
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
                sub.addAction(name, lambda n=name, b=bar: self._set_model(b, n))
        stage = self.document.stage
        sources = stage.slices[bar.slice_index].sources
        spec = method_spec(stage.merge_method)
        addable = [n for n in self.columns if n not in {s.model for s in sources}]
        if spec is not None and spec.max_models != 1 and addable and \
                (spec.max_models is None or len(sources) < spec.max_models):
            sub = menu.addMenu("Add source from")
            for name in addable:
                sub.addAction(name, lambda n=name, i=bar.slice_index: self.add_source(i, n))
        if len(sources) > 1:
            menu.addAction("Remove source", lambda b=bar: self.remove_source(b.slice_index, b.source_index))
        menu.exec(screen_pos)

    def add_source(self, slice_index: int, model: str) -> None:
        """Give a slice one more source, ``model`` at the slice's layer range."""
        limit = self._num_layers(model)
        self.document.apply_to_stage(lambda s: slice_edits.add_source(s, slice_index, model, num_layers=limit),
                                     f"Add source {model} to slice {slice_index + 1}")

    def remove_source(self, slice_index: int, source_index: int) -> None:
        model = self.document.stage.slices[slice_index].sources[source_index].model
        self.document.apply_to_stage(lambda s: slice_edits.remove_source(s, slice_index, source_index),
                                     f"Remove source {model} from slice {slice_index + 1}")

    def _set_model(self, bar: SliceBarItem, model: str) -> None:
        i, k, limit = bar.slice_index, bar.source_index, self._num_layers(model)
        self.document.apply_to_stage(lambda s: slice_edits.set_slice_model(s, i, model, source=k, num_layers=limit),
                                     f"Take slice {i + 1} from {model}")

    # ---- Qt overrides ---------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if event.oldSize() != event.size():
            self.rebuild()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        item = self.itemAt(event.position().toPoint())
        if event.button() == Qt.MouseButton.LeftButton and not isinstance(item, (SliceBarItem, OutputColumnItem)):
            self.document.select_slice(None)  # a click beside the slices clears the selection
        super().mousePressEvent(event)

    def slice_bar(self, slice_index: int, source_index: int = 0) -> SliceBarItem | None:
        return next((b for b in self.bars if b.slice_index == slice_index and b.source_index == source_index), None)

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, current_theme().canvas.background)
