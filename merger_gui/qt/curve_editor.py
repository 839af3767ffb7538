"""The t-curve editor: per-filter parameter curves over the output layers, with draggable points,
and the per-layer grid beside them.

What is drawn comes from :mod:`merger_gui.core.curves` (the curve series of a stage, resolved
as the plan resolves them); this widget only draws them and turns mouse, key and menu actions
into pure edits of :mod:`merger_gui.core.parameter_edits`, one undo step each. Points snap to
0.05 of the range (Shift: 0.01, Alt: free); double-click inserts a point where clicked; the
arrow keys move the selected point.
"""

from __future__ import annotations

import html
import math
from functools import partial

from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QSignalBlocker, QSize, Qt
from PySide6.QtGui import QKeyEvent, QPalette, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QGroupBox,
    QInputDialog,
    QLabel,
    QMenu,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from merger_gui.core import parameter_edits as edits
from merger_gui.core.curves import (
    CurveTarget,
    NamesByLayer,
    RuleSeries,
    applied_slices,
    curve_layout,
    curve_series,
    curve_targets,
    rule_warnings,
    setting_specs,
)
from merger_gui.core.curve_rows import values_at_layer
from merger_gui.core.gradient_fit import FREE_STEP, PRESETS, row_positions, snap, step_decimals
from merger_gui.core.methods import method_spec, parameter_default, parameter_facts
from merger_gui.core.parameters import interpolate_gradient, slice_position
from merger_gui.core.plan import OutputLayer, StagePlan
from merger_gui.core.recipe import FilterRule, Stage

from .curve_grid import CurveGrid
from .curve_handles import CurveHandlesItem, modifier_step
from .curve_rule_list import RuleList, rule_label
from .document import RecipeDocument
from .method_settings import MethodSettings
from .settings import Settings
from .themed_plot import ThemedPlotWidget

RULE_COLOURS = ("#e8684a", "#4a90e2", "#50b86c", "#b36ae2", "#e2b64a", "#4ac6c6", "#e24a9a")
FALLBACK_COLOUR = "#9a9a9a"
RULE_SYMBOLS = ("o", "s", "t", "d", "x", "+", "star")  # curves at the same value still tell apart
LEGEND_MARKS = ("●", "■", "▼", "◆", "✕", "✚", "★")  # the symbols, as text
NON_LAYER_X = -1.0  # where non-layer tensors (embeddings, norm, lm_head) are drawn
UNPLANNED_SAMPLES = 33
PLOT_MIN_H = 130  # with the grid's least, the editor fits the dock of a 1024×640 window
GRID_MIN_H = 80  # two rules and the scroll bar; the split gives the grid all its rows where there is room
PLOT_SHARE = 0.4  # of the split the plot keeps however many rules the grid has


class TCurveEditor(QWidget):
    """Edits a method's per-layer parameters (slerp ``t``, per-model ``weight``/``density``…).

    Args:
        document: The open recipe; edits go through it, one undo step per release.
        live_plan: Emits ``plan_changed(Plan | None)``; curves follow its output layers.
    """

    def __init__(self, document: RecipeDocument, live_plan, parent: QWidget | None = None,
                 settings: Settings | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.live_plan = live_plan
        self._settings = settings  # None: the application's settings, read when used
        self.selected_point: tuple[int, int] | None = None  # (rule, point) the arrow keys move
        self._layout: tuple[tuple[OutputLayer, ...], NamesByLayer] | None = None
        self._applied: list[tuple[int, int]] = []  # (first layer, length) of the slices the location sets
        self._targets: tuple[CurveTarget, ...] = ()
        self._stage: Stage | None = None  # what is drawn: the document's stage or a drag preview
        self._stale = True  # the stage changed since it was drawn (drawn when shown)
        self.rule_warnings: dict[int, str] = {}
        self.curve_items: dict[int, pg.PlotDataItem] = {}
        self._curve_values: dict[int, list[float]] = {}
        self._series: tuple[RuleSeries, ...] = ()  # what is drawn over planned layers, for hover texts
        self._curves: list[pg.PlotDataItem] = []
        self._markers: list[pg.PlotDataItem] = []
        self._seams: list[pg.InfiniteLine] = []

        self.target_combo = QComboBox()
        self.target_combo.setToolTip("Parameter to edit and where it is set")
        self.target_combo.currentIndexChanged.connect(lambda _: self._redraw())
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setObjectName("curveSummary")

        self.plot_widget = ThemedPlotWidget()
        self.plot_widget.setMinimumSize(240, PLOT_MIN_H)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setLabel("bottom", "output layer")
        self.handles = CurveHandlesItem((0.0, 1.0))
        self.handles.setZValue(10)
        self.handles.sigPointMoved.connect(self._preview_point)
        self.handles.sigPointMoveFinished.connect(self._commit_point)
        self.handles.sigPointDoubleClicked.connect(self.remove_point)
        self.handles.sigPointSelected.connect(self.select_point)
        self.plot.addItem(self.handles)
        self.selection_ring = pg.ScatterPlotItem(size=20, brush=None, pen=pg.mkPen("#ffb000", width=2.5))
        self.selection_ring.setZValue(9)
        self.plot.addItem(self.selection_ring)
        self.readout = pg.TextItem(anchor=(0.5, 1.3), color="#ffffff", fill=pg.mkBrush(40, 40, 40, 200))
        self.readout.setZValue(20)
        self.readout.setVisible(False)
        self.plot.addItem(self.readout)
        # The legend sits under the plot, not in it, where it would cover points to drag.
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setVisible(False)  # shown when curves overlap
        self.plot_widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.plot_widget.installEventFilter(self)
        self.plot_widget.scene().sigMouseClicked.connect(self._scene_clicked)
        self.plot_widget.scene().sigMouseMoved.connect(self._scene_hovered)
        # The value in effect where the recipe sets none (hidden when it sets one).
        dashed = pg.mkPen(FALLBACK_COLOUR, width=1.5, style=Qt.PenStyle.DashLine)
        self.default_line = pg.InfiniteLine(angle=0, pen=dashed, label="default {value:g}",
                                            labelOpts={"position": 0.9, "color": FALLBACK_COLOUR})
        self.default_line.setVisible(False)
        self.plot.addItem(self.default_line)

        self.rules_box = RuleList()
        self.rules_box.rule_selected.connect(self._rule_selected)
        self.rules_box.add_requested.connect(self._ask_add_rule)
        self.rules_box.remove_requested.connect(self.remove_rule)
        self.rules_box.move_requested.connect(self.move_rule)
        self.rules_box.renamed.connect(self.rename_rule)
        self.rules_box.menu_requested.connect(self._rule_menu)
        self.rules_box.shape_menu_requested.connect(self._fill_shape_menu)
        self.rule_list = self.rules_box.list  # the rows, for selection and in-place renames
        self.shape_menu = self.rules_box.shape_menu
        self.grid = CurveGrid(document)
        self.grid.sigRuleSelected.connect(self.rules_box.set_current_row)
        hint = QLabel("Drag points (Shift 0.01, Alt free) · double-click adds or removes one · "
                      "type or paste values in the grid")
        hint.setToolTip("Drag a point: it snaps to 0.05 (Shift: 0.01, Alt: free).\n"
                        "Arrow keys: Up/Down move the selected point, Left/Right select the next one.\n"
                        "Double-click the plot to add a point there, a point to remove it.\n"
                        "Type or paste values in the grid (a spreadsheet row or block).")
        hint.setWordWrap(True)
        hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)  # muted, but enabled for its tooltip
        self.no_curves_label = QLabel()
        self.no_curves_label.setWordWrap(True)
        self.settings = MethodSettings(document)
        self.settings_box = QGroupBox("Method settings")
        QVBoxLayout(self.settings_box).addWidget(self.settings)
        # One column, the plot on top: fits a dock of about 480 px without scrolling.
        self.curve_area = QWidget()
        curves = QVBoxLayout(self.curve_area)
        curves.setContentsMargins(0, 0, 0, 0)
        curves.addWidget(self.target_combo)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.plot_widget)
        self.splitter.addWidget(self.grid)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.splitterMoved.connect(self._split_moved)
        self._split_by_user = False  # the user dragged the handle: kept until the grid's rows change
        self._fitted_rows = -1
        self.grid.setMinimumHeight(GRID_MIN_H)
        curves.addWidget(self.splitter, 1)
        curves.addWidget(self.legend)
        curves.addWidget(self.summary)
        curves.addWidget(self.rules_box)
        curves.addWidget(hint)
        column = self._column_widget = QWidget()
        layout = QVBoxLayout(column)
        layout.addWidget(self.no_curves_label)
        layout.addWidget(self.curve_area, 1)
        layout.addWidget(self.settings_box)
        layout.addStretch(0)  # takes the room only while the curves are hidden
        self._column = layout
        # In a dock lower than the plot, the grid, the rules and the legend need (a 1024×640 window)
        # the column scrolls; the splitter would otherwise lay the grid over the plot.
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidget(column)
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)

        # Bound methods, not lambdas: Qt drops the connections when this widget is deleted.
        document.recipe_changed.connect(self.refresh)
        document.current_stage_changed.connect(self.refresh)
        live_plan.plan_changed.connect(self.refresh)
        self.refresh()

    # --- state -------------------------------------------------------------------------------

    @property
    def target(self) -> CurveTarget | None:
        i = self.target_combo.currentIndex()
        return self._targets[i] if 0 <= i < len(self._targets) else None

    def select_target(self, label: str) -> None:
        """Edit the target called ``label`` (as listed in the combo)."""
        self.target_combo.setCurrentIndex(next(i for i, t in enumerate(self._targets) if t.label == label))

    def rules(self) -> tuple[FilterRule, ...]:
        target = self.target
        if target is None or self._stage is None:
            return ()
        return edits.get_rules(self._stage, target.location, target.name)

    def _stage_plan(self) -> StagePlan | None:
        """The current stage's plan; kept by the live plan even when another stage fails."""
        return self.live_plan.stage_plan(self.document.current_stage)

    def refresh(self, *_: object) -> None:
        """Re-read the document's stage and redraw (keeps the chosen target when it still exists)."""
        self._stage = self.document.stage
        previous = self.target
        self._targets = curve_targets(self._stage)
        self._show_sections()
        with QSignalBlocker(self.target_combo):
            self.target_combo.clear()
            self.target_combo.addItems([t.label for t in self._targets])
            labels = [t.label for t in self._targets]
            if previous is not None and previous.label in labels:
                self.target_combo.setCurrentIndex(labels.index(previous.label))
            elif self._targets:  # start on a parameter the recipe sets, not an empty one
                stage = self._stage
                self.target_combo.setCurrentIndex(next(
                    (i for i, t in enumerate(self._targets) if edits.get_rules(stage, t.location, t.name)), 0))
        self._stale = True
        if self.isVisible():  # hidden (another tab), it redraws when shown: no cost per designer edit
            self._redraw()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._ensure_drawn()
        self._fit_split()  # resized while hidden (another tab)

    def _ensure_drawn(self) -> None:
        """Draw the current stage if an edit arrived while hidden."""
        if self._stale:
            self._redraw()

    def minimumSizeHint(self) -> QSize:
        """As wide as the column needs (it scrolls only up and down), as low as the scroll area allows."""
        hint = super().minimumSizeHint()
        column = self._column_widget.minimumSizeHint().width()
        return QSize(max(hint.width(), column + self.scroll_area.verticalScrollBar().sizeHint().width()),
                     hint.height())

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_split()  # the layout has sized the splitter already

    def _split_moved(self, *_: int) -> None:
        self._split_by_user = True

    def _fit_split(self) -> None:
        """The grid as tall as its rows, the plot the rest (never under ``PLOT_SHARE`` of the split),
        unless the user moved the handle since the grid's rows last changed."""
        rows = self.grid.table.rowCount()
        if rows != self._fitted_rows:
            self._fitted_rows, self._split_by_user = rows, False
        total = sum(self.splitter.sizes())
        if self._split_by_user or total <= 0 or not self.curve_area.isVisible():
            return
        plot = max(self.plot_widget.minimumHeight(), int(total * PLOT_SHARE))
        grid = max(self.grid.minimumHeight(), min(self.grid.rows_height(), total - plot))
        if self.splitter.sizes()[1] != grid:
            self.splitter.setSizes([total - grid, grid])

    def _show_sections(self) -> None:
        """The curves when the method has any, its settings when it has any, else a note why not."""
        stage = self._stage
        assert stage is not None
        spec = method_spec(stage.merge_method)
        settings = setting_specs(stage)
        self.settings.set_specs(settings)
        self.settings_box.setVisible(bool(settings))
        self.curve_area.setVisible(bool(self._targets))
        self._column.setStretch(self._column.count() - 1, 0 if self._targets else 1)
        if spec is None:
            note = f"Unknown merge method {stage.merge_method!r}: no parameters to show."
        elif not self._targets:
            name = spec.label.split(" (")[0]
            curves = [p.name for p in spec.curve_parameters]
            if curves:  # per-model ones need models to belong to
                note = f"Add a slice to shape {name}'s {', '.join(dict.fromkeys(curves))} here."
            else:
                note = f"{name} has no per-layer curves" + (": its settings are below." if settings else
                                                             " and no settings.")
        else:
            note = ""
        self.no_curves_label.setText(note)
        self.no_curves_label.setVisible(bool(note))

    # --- drawing -----------------------------------------------------------------------------

    def _redraw(self) -> None:
        self._stale = False
        target = self.target
        self._reset_items()
        self.curve_items.clear()
        self._curve_values.clear()
        self._series = ()
        self._layout, self._applied = None, []
        rules = self.rules()
        stage_plan = self._stage_plan()
        if target is None:
            self.handles.setData([], [])
            self.default_line.setVisible(False)
            self.grid.clear_rows()
            self._fill_rule_list(())
            return
        assert self._stage is not None
        low, high = edits.drag_bounds(self._stage, target.location, target.name)  # every point, even out of range
        self.handles.value_range = (low, high)
        self.handles.snap_bounds = edits.value_bounds(self._stage.merge_method, target.name)
        self.plot.setLabel("left", target.name)
        self.plot.setYRange(low, high, padding=0.06)
        layout = curve_layout(self._stage, stage_plan, target, rules)
        if layout is None:
            self._draw_unplanned(rules)
        else:
            self._draw_planned(target, rules, *layout)
        default = parameter_default(self._stage.merge_method, target.name)
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        self.default_line.setVisible(not rules and numeric_default)
        if not rules:
            if numeric_default:
                self.default_line.setValue(default)
            facts = parameter_facts(self._stage.merge_method, target.name)
            uses = f"the merge uses the method's default {default:g}" if numeric_default else \
                facts.unset if facts else "the merge goes without it"
            self.summary.setText(f"This recipe sets no {target.name} here, so {uses}. Add a rule to shape it.")
        self._fill_rule_list(rules)
        self._restyle()
        self._fit_split()

    def _pooled(self, pool: list, index: int):
        """Item ``index`` of a pool, made visible; items are made once and reused, since
        adding and removing plot items on every redraw is slow (and leaks in PySide6 6.12)."""
        while len(pool) <= index:
            item = pg.InfiniteLine(angle=90, pen=pg.mkPen("#bbbbbb", style=Qt.PenStyle.DashLine)) \
                if pool is self._seams else pg.PlotDataItem()
            self.plot.addItem(item)
            pool.append(item)
        pool[index].setVisible(True)
        return pool[index]

    def _reset_items(self) -> None:
        for item in self._curves + self._markers:
            item.setData([], [])
            item.setVisible(False)
        for line in self._seams:
            line.setVisible(False)

    def _draw_unplanned(self, rules: tuple[FilterRule, ...]) -> None:
        """Without a layer plan (donors unknown) draw each rule over one slice, x in [0, 1]."""
        xs = [i / (UNPLANNED_SAMPLES - 1) for i in range(UNPLANNED_SAMPLES)]
        spots_x, spots_y, spots_data, brushes = [], [], [], []
        self.rule_warnings = rule_warnings(rules, None)
        for r, rule in enumerate(rules):
            values = edits.points(rule.value)
            if not values:
                continue
            colour = _rule_colour(rule, r)
            ys = [float(interpolate_gradient(values, x)) for x in xs]
            self._curve_values[r] = ys
            self.curve_items[r] = self._pooled(self._curves, r)
            self.curve_items[r].setData(xs, ys)
            for p, v in enumerate(values):
                spots_x.append(p / (len(values) - 1) if len(values) > 1 else 0.0)
                spots_y.append(v)
                spots_data.append((r, p))
                brushes.append(pg.mkBrush(colour))
        self.grid.clear_rows()
        self.plot.setLabel("bottom", "position in slice (no donors yet)")
        self.plot.setXRange(0, 1, padding=0.04)
        self.handles.setData(x=spots_x, y=spots_y, data=spots_data, brush=brushes, pen=pg.mkPen("w"))
        self.summary.setText("Add donors to see the curve over the output layers.")

    def _draw_planned(self, target: CurveTarget, rules: tuple[FilterRule, ...], layers: tuple[OutputLayer, ...],
                      names: NamesByLayer, planned: bool) -> None:
        stage = self._stage
        assert stage is not None
        # Without a plan, names stand in for tensors: no finding about unmatched rules.
        self.rule_warnings = rule_warnings(rules, names if planned else None)
        error = getattr(self.live_plan, "error", None)
        note = None if planned else f"Layers from the recipe's layer ranges: no full plan ({error})." if error else \
            "Layers from the recipe's layer ranges: the donors are not inspected yet."
        seams = [layer.index for layer in layers if layer.position == 0]
        for k, seam in enumerate(seams[1:]):
            line = self._pooled(self._seams, k)
            line.setValue(seam - 0.5)
        series = self._series = curve_series(stage, target, rules, layers, names)
        self._layout, self._applied = (layers, names), applied_slices(stage, layers, target)
        self.grid.show_rows(stage, target, [rule_label(r) for r in rules],
                            [_rule_colour(rule, r) for r, rule in enumerate(rules)], layers, names)
        spots_x, spots_y, spots_data, brushes = [], [], [], []
        for r, rule in enumerate(rules):
            colour = _rule_colour(rule, r)
            xs, ys = series[r].layers, series[r].values
            non_layer = point.value if (point := series[r].non_layer) is not None else None
            self._curve_values[r] = ys
            if all(math.isnan(y) for y in ys):
                xs, ys = [], []  # this rule takes no layer tensor
            self.curve_items[r] = self._pooled(self._curves, r)
            self.curve_items[r].setData(xs, ys, connect="finite")
            if non_layer is not None:
                marker = self._pooled(self._markers, r)
                marker.setData([NON_LAYER_X], [non_layer], pen=None, symbol="d", symbolSize=10,
                               symbolBrush=colour, symbolPen=pg.mkPen("k", width=0.5))
            values = edits.points(rule.value)
            for layer_start, length in self._applied:
                for p, v in enumerate(values):
                    frac = p / (len(values) - 1) if len(values) > 1 else 0.0
                    spots_x.append(layer_start + frac * max(0, length - 1))
                    spots_y.append(v)
                    spots_data.append((r, p))
                    brushes.append(pg.mkBrush(colour))
        self.handles.setData(x=spots_x, y=spots_y, data=spots_data, brush=brushes, pen=pg.mkPen("w", width=1.5))
        self.plot.setLabel("bottom", "output layer  (◆ −1: embeddings, norm, lm_head)" if planned else
                           "output layer  (by the recipe's layer ranges)")
        self.plot.setXRange(NON_LAYER_X - 0.5 if planned else -0.5, max(1, len(layers) - 1) + 0.5, padding=0.02)
        overridden = len(seams) - len(self._applied)
        extra = f"; {overridden} slice(s) override it with their own value" if overridden > 0 else ""
        self.summary.setText(f"{len(layers)} output layers in {len(seams)} slice(s); "
                             f"the curve restarts in every slice{extra}." + (f"\n{note}" if note else ""))

    def _restyle(self) -> None:
        """The selected rule's curve on top and thicker; every curve its own marker; a legend
        with each rule's values that names curves drawn on top of an earlier one."""
        rules, selected = self.rules(), self.rule_list.currentRow()
        planned, entries = self._layout is not None, []
        for r, item in self.curve_items.items():
            colour, chosen = _rule_colour(rules[r], r), r == selected
            item.setPen(pg.mkPen(colour, width=3.5 if chosen else 1.5))
            item.setSymbol(RULE_SYMBOLS[r % len(RULE_SYMBOLS)] if planned else None)
            item.setSymbolSize(8 if chosen else 6)
            item.setSymbolBrush(colour)
            item.setSymbolPen(None)
            item.setZValue(6 if chosen else 2)
            same = next((rule_label(rules[k]) for k in self.curve_items if k < r and
                         _same_curve(self._curve_values[k], self._curve_values[r])), None)
            text = _unbreakable(f"{rule_label(rules[r]).split(' (')[0]}: {_value_summary(rules[r])}" +
                                (f" (under {same})" if same else ""))
            mark = LEGEND_MARKS[r % len(LEGEND_MARKS)] if planned else "—"
            entries.append(f"<span style='color:{colour}'>{mark}</span>&nbsp;" + (f"<b>{text}</b>" if chosen else text))
        self.legend.setText(" &nbsp; ".join(entries))
        self.legend.setVisible(len(entries) > 1)
        self._show_selected_point()

    def _rule_selected(self, row: int) -> None:
        self.grid.select_rule(row)
        if self.selected_point is not None and self.selected_point[0] != row:
            self.selected_point = None
        self._restyle()

    def select_point(self, rule: int, point: int) -> None:
        """Make point ``point`` of rule ``rule`` the one the arrow keys move (and its rule current)."""
        self.selected_point = (rule, point)
        self.plot_widget.setFocus()
        self.rules_box.set_current_row(rule)
        self._show_selected_point()

    def _show_selected_point(self) -> None:
        where = self.handle_positions(*self.selected_point) if self.selected_point else []
        self.selection_ring.setData([p.x() for p in where], [p.y() for p in where])

    def _fill_rule_list(self, rules: tuple[FilterRule, ...]) -> None:
        colours = [_rule_colour(rule, r) for r, rule in enumerate(rules)]
        self.rules_box.fill(rules, colours, self.rule_warnings, can_add=self.target is not None)

    # --- editing -----------------------------------------------------------------------------

    def _edit(self, fn, text: str) -> None:
        target = self.target
        if target is None:
            return
        label = target.label
        self.document.apply_to_stage(lambda s: fn(s, target.location, target.name), text)
        if self.target is None or self.target.label != label:
            self.select_target(label)

    def _preview_point(self, rule: int, point: int, value: float) -> None:
        target = self.target
        if target is None:
            return
        self._stage = edits.set_curve_point(self.document.stage, target.location, target.name, rule, point, value)
        self._redraw_curves_only()
        self._show_readout(rule, point, value)

    def _show_readout(self, rule: int, point: int, value: float) -> None:
        """The value being dragged to, written as it will be stored, above the point."""
        where = self.handle_positions(rule, point)
        if not where:
            return
        decimals = step_decimals(self.handles.step)
        name = self.target.name if self.target else "t"
        self.readout.setText(f"{name} = {value:.{decimals}f}")
        self.readout.setPos(where[0].x(), value)
        self.readout.setVisible(True)

    def _redraw_curves_only(self) -> None:
        # Only the curves: the handles item is being dragged and moves its own spots.
        target, rules, stage_plan = self.target, self.rules(), self._stage_plan()
        if target is None:
            return
        assert self._stage is not None
        layout = curve_layout(self._stage, stage_plan, target, rules)
        if layout is None:
            samples = [i / (UNPLANNED_SAMPLES - 1) for i in range(UNPLANNED_SAMPLES)]
            for r, rule in enumerate(rules):
                if r in self.curve_items:
                    values = edits.points(rule.value)
                    self._curve_values[r] = [float(interpolate_gradient(values, x)) for x in samples]
                    self.curve_items[r].setData(samples, self._curve_values[r])
            return
        for r, series in enumerate(curve_series(self._stage, target, rules, *layout[:2])):
            xs, ys = series.layers, series.values
            self._curve_values[r] = ys
            if r in self.curve_items and not all(math.isnan(y) for y in ys):
                self.curve_items[r].setData(xs, ys)

    def _commit_point(self, rule: int, point: int, old: float, new: float) -> None:
        self.readout.setVisible(False)
        self.selected_point = (rule, point)
        self._stage = self.document.stage
        if old == new:
            self._redraw()
            return
        name = self.target.name if self.target else "t"
        self._edit(lambda s, loc, n: edits.set_curve_point(s, loc, n, rule, point, new),
                   f"Move {name} point to {new:g}")

    def add_point(self, rule: int) -> None:
        """Give rule ``rule`` one more (evenly spaced) point."""
        self._edit(lambda s, loc, n: edits.add_point(s, loc, n, rule), "Add curve point")

    def remove_point(self, rule: int, point: int) -> None:
        """Remove a point (a rule keeps at least one)."""
        values = edits.points(self.rules()[rule].value)
        if len(values) > 1:
            self._edit(lambda s, loc, n: edits.remove_point(s, loc, n, rule, point), "Remove curve point")

    def add_rule(self, filter_: str | None) -> None:
        """Add a rule for ``filter_`` (before the fallback), copying the fallback's value."""
        target = self.target
        if target is None:
            return
        self._edit(lambda s, loc, n: edits.add_rule(s, loc, n, filter_), f"Add {target.name} rule")
        rules = self.rules()
        self.rule_list.setCurrentRow(next(i for i, r in enumerate(rules) if r.filter == (filter_ or None)))

    def remove_rule(self, rule: int) -> None:
        if 0 <= rule < len(self.rules()):
            self._edit(lambda s, loc, n: edits.remove_rule(s, loc, n, rule), "Remove rule")

    def move_rule(self, rule: int, step: int) -> None:
        """Move a rule up (``step`` −1) or down (+1); the first match wins."""
        to = rule + step
        if 0 <= rule < len(self.rules()) and 0 <= to < len(self.rules()):
            self._edit(lambda s, loc, n: edits.move_rule(s, loc, n, rule, to), "Reorder rules")
            self.rule_list.setCurrentRow(to)

    def rename_rule(self, rule: int, filter_: str | None) -> None:
        self._edit(lambda s, loc, n: edits.rename_rule(s, loc, n, rule, filter_), "Rename rule")

    def _preset_range(self, rule: int) -> tuple[float, float]:
        """A preset runs between the rule's lowest and highest value (0 → 1 when it is flat)."""
        values = edits.points(self.rules()[rule].value) or (0.0,)
        low, high = min(values), max(values)
        if low == high and self._stage is not None and self.target is not None:
            low, high = edits.value_bounds(self._stage.merge_method, self.target.name)
            low, high = max(low, 0.0), min(high, 1.0)
        return low, high

    def apply_preset(self, rule: int, preset: str) -> None:
        """Give ``rule`` a preset shape over its current range, exact at the layers it applies to."""
        low, high = self._preset_range(rule)
        slices = [row_positions(length) for _, length in self._applied]
        self._edit(lambda s, loc, n: edits.apply_preset(s, loc, n, rule, preset, low, high, slices),
                   f"Shape rule: {PRESETS[preset].label}")

    def invert_rule(self, rule: int) -> None:
        self._edit(lambda s, loc, n: edits.invert_rule(s, loc, n, rule), "Invert rule")

    def mirror_rule(self, rule: int) -> None:
        self._edit(lambda s, loc, n: edits.mirror_rule(s, loc, n, rule), "Mirror rule")

    def copy_rule(self, rule: int, to_rule: int) -> None:
        """Give rule ``to_rule`` the curve of rule ``rule``."""
        self._edit(lambda s, loc, n: edits.copy_rule_value(s, loc, n, rule, to_rule),
                   f"Copy curve to {rule_label(self.rules()[to_rule])}")

    @property
    def user_settings(self) -> Settings:
        return self._settings or Settings()

    def save_user_preset(self, rule: int, name: str) -> None:
        """Keep ``rule``'s values as user preset ``name`` (for every recipe)."""
        self.user_settings.save_curve_preset(name, edits.points(self.rules()[rule].value))

    def apply_user_preset(self, rule: int, name: str) -> None:
        values = self.user_settings.curve_presets[name]
        target, stage = self.target, self._stage
        if target is None or stage is None:
            return
        bounds = edits.value_bounds(stage.merge_method, target.name)
        clamped = tuple(edits.clamp(v, bounds) for v in values)
        value = clamped if len(clamped) > 1 else clamped[0]
        self._edit(lambda s, loc, n: edits.set_rule_value(s, loc, n, rule, value), f"Shape rule: {name}")

    def _fill_shape_menu(self, menu: QMenu, rule: int) -> None:
        menu.clear()
        if not 0 <= rule < len(self.rules()):
            return
        for key, shape in PRESETS.items():
            menu.addAction(shape.label, partial(self.apply_preset, rule, key))
        menu.addSeparator()
        menu.addAction("Invert", lambda: self.invert_rule(rule))
        menu.addAction("Mirror (first layer ↔ last)", lambda: self.mirror_rule(rule))
        copy = menu.addMenu("Copy curve to")
        for other, target_rule in enumerate(self.rules()):
            if other != rule:
                copy.addAction(rule_label(target_rule), partial(self.copy_rule, rule, other))
        copy.setEnabled(len(self.rules()) > 1)
        menu.addSeparator()
        presets = self.user_settings.curve_presets
        for name in presets:
            menu.addAction(f"★ {name}", partial(self.apply_user_preset, rule, name))
        menu.addAction("Save as my preset…", lambda: self._ask_save_preset(rule))
        if presets:
            remove = menu.addMenu("Remove my preset")
            for name in presets:
                remove.addAction(name, partial(self.user_settings.remove_curve_preset, name))

    def _ask_save_preset(self, rule: int) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Name of the shape (kept for every recipe):")
        if ok and name.strip():
            self.save_user_preset(rule, name.strip())

    def convert_rule(self, rule: int) -> None:
        """Toggle a rule between a scalar and a gradient."""
        fn = edits.to_scalar if isinstance(self.rules()[rule].value, tuple) else edits.to_gradient
        self._edit(lambda s, loc, n: fn(s, loc, n, rule), "Convert rule value")

    def _ask_add_rule(self) -> None:
        text, ok = QInputDialog.getText(self, "Add rule", "Filter (a substring of tensor names, e.g. self_attn):")
        if ok:
            self.add_rule(text.strip() or None)

    def _rule_menu(self, row: int, global_pos: QPoint) -> None:
        menu = QMenu(self)
        menu.addAction("Add rule…", self._ask_add_rule)
        if row >= 0:
            menu.addAction("Add point", lambda: self.add_point(row))
            is_gradient = isinstance(self.rules()[row].value, tuple)
            menu.addAction("Make constant" if is_gradient else "Make gradient", lambda: self.convert_rule(row))
            self._fill_shape_menu(menu.addMenu("Shape"), row)
            menu.addAction("Remove rule", lambda: self.remove_rule(row))
        menu.exec(global_pos)

    def _scene_clicked(self, ev) -> None:
        if ev.double() and not ev.isAccepted() and ev.button() == Qt.MouseButton.LeftButton:
            row = self.rule_list.currentRow()
            if row >= 0:
                pos = self.plot.getViewBox().mapSceneToView(ev.scenePos())
                self.insert_point(row, pos.x(), pos.y(), modifier_step(ev.modifiers(), self.handles.snap_bounds))

    def slice_x(self, x: float) -> float:
        """The position in its slice of plot coordinate ``x`` (a layer, or [0, 1] without layers),
        in the nearest slice the edited location sets."""
        if self._layout is None:
            return min(1.0, max(0.0, x))
        if not self._applied:
            return 0.0
        start, length = min(self._applied, key=lambda a: 0 if a[0] - 0.5 <= x <= a[0] + a[1] - 0.5
                            else min(abs(x - a[0]), abs(x - a[0] - a[1] + 1)))
        if length <= 1:
            return slice_position(0, length)
        return min(1.0, max(0.0, (x - start) / (length - 1)))

    def insert_point(self, rule: int, x: float, value: float, step: float = FREE_STEP) -> None:
        """Add a point to ``rule`` so its curve passes through (``x``, ``value``) in plot
        coordinates, ``value`` snapped to ``step`` (one undo step)."""
        new = snap(value, step)
        at = self.slice_x(x)
        self._edit(lambda s, loc, n: edits.insert_point(s, loc, n, rule, at, new), f"Add curve point at {new:g}")

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.plot_widget and event.type() == QEvent.Type.KeyPress:
            assert isinstance(event, QKeyEvent)
            return self._key(event)
        return super().eventFilter(watched, event)

    def _key(self, event: QKeyEvent) -> bool:
        """Up/Down move the selected point a snapping step (Shift fine, Alt free), Left/Right
        select the rule's previous or next point."""
        key, selected = event.key(), self.selected_point
        if selected is None or selected[0] >= len(self.rules()):
            return False
        rule, point = selected
        count = len(edits.points(self.rules()[rule].value))
        if key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self.select_point(rule, max(0, min(count - 1, point + (1 if key == Qt.Key.Key_Right else -1))))
            return True
        if key not in (Qt.Key.Key_Up, Qt.Key.Key_Down) or point >= count:
            return False
        step = modifier_step(event.modifiers(), self.handles.snap_bounds)
        value = edits.points(self.rules()[rule].value)[point]
        new = snap(value + (step if key == Qt.Key.Key_Up else -step), step)
        self._edit(lambda s, loc, n: edits.set_curve_point(s, loc, n, rule, point, new), f"Move point to {new:g}")
        return True

    # --- geometry, for tests and tooltips ------------------------------------------------------

    def handle_positions(self, rule: int, point: int) -> list[QPointF]:
        """Data coordinates of every copy of a control point."""
        self._ensure_drawn()
        d = self.handles.data
        return [QPointF(float(d["x"][i]), float(d["y"][i])) for i in range(len(d))
                if tuple(d["data"][i]) == (rule, point)]

    def hover_text(self, layer: int | None) -> str:
        """What each rule gives at output ``layer`` (None: the non-layer tensors) and where it comes from."""
        self._ensure_drawn()
        rules = self.rules()
        lines = []
        for r, series in enumerate(self._series):
            point = series.non_layer if layer is None else next((p for p in series.points if p.layer == layer), None)
            if point is None or point.resolution is None or r >= len(rules):
                continue
            lines.append(f"{rule_label(rules[r])}: {point.value:g} from {point.resolution.describe}"
                         f" ({point.tensor})")
        title = "embeddings, norm, lm_head" if layer is None else f"output layer {layer}"
        stage_plan, target = self._stage_plan(), self.target
        if layer is not None and stage_plan is not None and 0 <= layer < stage_plan.num_layers and self._stage:
            others = [f"{v.parameter} ({v.rule}): {v.value:g}" for v in values_at_layer(self._stage, stage_plan, layer)
                      if target is None or v.parameter != target.label]
            lines += ["other curves here:", *others] if others else []
        return "\n".join([title, *lines]) if lines else ""

    def _scene_hovered(self, pos: QPointF) -> None:
        x = self.plot.getViewBox().mapSceneToView(pos).x()
        layer = None if round(x) == NON_LAYER_X else int(round(x))
        self.plot_widget.setToolTip(self.hover_text(layer))

    def curve_values(self, rule: int) -> list[float]:
        """The drawn curve of ``rule``, one value per output layer (nan where it gives none)."""
        self._ensure_drawn()
        return list(self._curve_values[rule])


def _rule_colour(rule: FilterRule, index: int) -> str:
    return FALLBACK_COLOUR if rule.filter in (None, "*") else RULE_COLOURS[index % len(RULE_COLOURS)]


def _value_summary(rule: FilterRule) -> str:
    values = edits.points(rule.value)
    if len(values) <= 3:
        return " → ".join(f"{v:g}" for v in values)
    return f"{values[0]:g} … {values[-1]:g} ({len(values)} points)"


def _unbreakable(text: str) -> str:
    """``text`` as HTML a wrapping label does not break inside: the legend wraps between its entries only."""
    return html.escape(text).replace(" ", "&nbsp;").replace("-", "-\u2060").replace("/", "/\u2060")


def _same_curve(a: list[float], b: list[float]) -> bool:
    """Whether two drawn curves lie on top of each other (and are drawn at all)."""
    drawn = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) and math.isnan(y))]
    return bool(drawn) and all(math.isclose(x, y, abs_tol=1e-9) for x, y in drawn)
