"""The t-curve editor: per-filter parameter curves over the output layers, with draggable points.

Curves are computed with :func:`~merger_gui.core.parameters.evaluate_parameter` on the
current layer plan, so they show exactly what the merge applies: they restart in every
slice, more specific scopes win, and non-layer tensors take the gradient's first value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QSignalBlocker, Qt, Signal
from PySide6.QtGui import QAction, QColor
from PySide6.QtWidgets import (
    QComboBox, QGroupBox, QHBoxLayout, QInputDialog, QLabel, QListWidget, QListWidgetItem, QMenu, QPushButton,
    QStyle, QVBoxLayout, QWidget,
)
import pyqtgraph as pg  # noqa: E402  (after PySide6, so pyqtgraph binds to it)

from merger_gui.core import parameter_edits as edits
from merger_gui.core.methods import ParameterSpec, method_spec
from merger_gui.core.parameter_edits import ParamLocation
from merger_gui.core.parameters import evaluate_parameter, interpolate_gradient
from merger_gui.core.plan import OutputLayer, StagePlan
from merger_gui.core.recipe import FilterRule, Parameters, Slice, SliceSource, Stage

from .document import RecipeDocument
from .method_settings import MethodSettings
from .themed_plot import ThemedPlotWidget

# Amounts that may vary over the layers; the other parameters are settings (switches, counts).
CURVE_PARAMETERS = ("t", "weight", "density", "lambda", "scale", "gamma", "epsilon", "select_topk", "r", "alpha")
# Where a curve parameter is a numerical threshold instead (RAM's epsilon is about 1e-5).
THRESHOLDS = {("ram", "epsilon"), ("ramplus_tl", "epsilon")}
# Where a method reads a curve parameter on another scale: nearswap's t is a distance, about 1e-4.
METHOD_BOUNDS = {("nearswap", "t"): (0.0, 0.01)}
# What the merge does when a parameter without default is left out.
UNSET_MEANING = {"scale": "the tensors are copied unscaled"}
RULE_COLOURS = ("#e8684a", "#4a90e2", "#50b86c", "#b36ae2", "#e2b64a", "#4ac6c6", "#e24a9a")
FALLBACK_COLOUR = "#9a9a9a"
NON_LAYER_X = -1.0  # where non-layer tensors (embeddings, norm, lm_head) are drawn
UNPLANNED_SAMPLES = 33


@dataclass(frozen=True)
class CurveTarget:
    """One editable parameter: its name, where it lives and, for per-model ones, the model."""

    label: str
    name: str
    location: ParamLocation
    model: str | None = None


def is_curve(method: str, name: str) -> bool:
    """Whether parameter ``name`` of ``method`` is edited as a curve (else as a setting)."""
    return name in CURVE_PARAMETERS and (method.lower(), name) not in THRESHOLDS


def curve_bounds(method: str, name: str) -> tuple[float, float]:
    """The range a curve of ``name`` is drawn and dragged in, for ``method``."""
    return METHOD_BOUNDS.get((method.lower(), name), edits.value_bounds(name))


def setting_specs(stage: Stage) -> tuple[ParameterSpec, ...]:
    """The shared parameters of the stage's method that are settings, not curves."""
    spec = method_spec(stage.merge_method)
    return tuple(p for p in spec.shared_parameters if not is_curve(spec.name, p.name)) if spec else ()


def curve_targets(stage: Stage) -> tuple[CurveTarget, ...]:
    """Every curve parameter of ``stage`` the editor offers, top-level shared ones first."""
    spec = method_spec(stage.merge_method)
    if spec is None:
        return ()
    targets: list[CurveTarget] = []
    slices = stage.slices or ()
    for p in spec.shared_parameters:
        if not is_curve(spec.name, p.name):
            continue
        targets.append(CurveTarget(f"{p.name} (all slices)" if len(slices) > 1 else p.name, p.name, edits.TOP_LEVEL))
        targets += [CurveTarget(f"{p.name} (slice {i + 1})", p.name, ParamLocation(i))
                    for i, s in enumerate(slices) if p.name in s.parameters]
    for p in spec.model_parameters:
        if not is_curve(spec.name, p.name):
            continue
        if stage.models is not None:
            targets += [CurveTarget(f"{p.name} · {e.model}", p.name, ParamLocation(model_index=k), e.model)
                        for k, e in enumerate(stage.models) if not (p.non_base and e.model == stage.base_model)]
        for i, slice_ in enumerate(slices):
            base = slice_.base_model or stage.base_model
            suffix = f" (slice {i + 1})" if len(slices) > 1 else ""
            targets += [CurveTarget(f"{p.name} · {s.model}{suffix}", p.name, ParamLocation(i, j), s.model)
                        for j, s in enumerate(slice_.sources) if not (p.non_base and s.model == base)]
    return tuple(targets)


def rule_label(rule: FilterRule) -> str:
    return "fallback (every tensor)" if rule.filter in (None, "*") else rule.filter


class CurveHandlesItem(pg.ScatterPlotItem):
    """Control points of the edited rules; each spot's data is ``(rule, point)``.

    Dragging moves every copy of a point (one per slice) vertically, clamped to the
    parameter's bounds; ``sigPointMoved`` previews, ``sigPointMoveFinished(rule, point,
    old, new)`` fires once on release; a right click during a drag restores the start.
    """

    sigPointMoved = Signal(int, int, float)
    sigPointMoveFinished = Signal(int, int, float, float)
    sigPointDoubleClicked = Signal(int, int)

    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__(pxMode=True, size=11, hoverable=True, hoverSize=14)
        self.value_range = bounds
        self._drag: tuple[int, int, float] | None = None  # rule, point, start value

    def _hit(self, pos: QPointF) -> tuple[int, int] | None:
        spots = self.pointsAt(pos)
        return tuple(spots[0].data()) if len(spots) else None  # type: ignore[return-value]

    def _move_copies(self, key: tuple[int, int], value: float) -> None:
        data = self.data
        for i in range(len(data)):
            if tuple(data["data"][i]) == key:
                data["y"][i] = value
        self.updateSpots()
        self.prepareGeometryChange()
        self.informViewBoundsChanged()

    def mouseDragEvent(self, ev) -> None:  # noqa: N802 (pyqtgraph override)
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
        if self._drag is None:
            ev.ignore()
            return
        ev.accept()
        rule, point, start = self._drag
        low, high = self.value_range
        value = round(min(high, max(low, ev.pos().y())), edits.DECIMALS)
        self._move_copies((rule, point), value)
        if ev.isFinish():
            self._drag = None
            self.sigPointMoveFinished.emit(rule, point, start, value)
        else:
            self.sigPointMoved.emit(rule, point, value)

    def mouseClickEvent(self, ev) -> None:  # noqa: N802
        if self._drag is not None and ev.button() == Qt.MouseButton.RightButton:
            rule, point, start = self._drag
            self._drag = None
            self._move_copies((rule, point), start)
            self.sigPointMoved.emit(rule, point, start)
            ev.accept()
            return
        hit = self._hit(ev.pos())
        if hit is not None and ev.button() == Qt.MouseButton.LeftButton and ev.double():
            ev.accept()
            self.sigPointDoubleClicked.emit(*hit)
            return
        ev.ignore()


class TCurveEditor(QWidget):
    """Edits a method's per-layer parameters (slerp ``t``, per-model ``weight``/``density``…).

    Args:
        document: The open recipe; edits go through it, one undo step per release.
        live_plan: Emits ``plan_changed(Plan | None)``; curves follow its output layers.
    """

    def __init__(self, document: RecipeDocument, live_plan, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.live_plan = live_plan
        self._targets: tuple[CurveTarget, ...] = ()
        self._stage: Stage | None = None  # what is drawn: the document's stage or a drag preview
        self.rule_warnings: dict[int, str] = {}
        self.curve_items: dict[int, pg.PlotDataItem] = {}
        self._curve_values: dict[int, list[float]] = {}
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
        self.plot_widget.setMinimumSize(240, 150)
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
        self.plot.addItem(self.handles)
        self.plot_widget.scene().sigMouseClicked.connect(self._scene_clicked)
        # The value in effect where the recipe sets none (hidden when it sets one).
        dashed = pg.mkPen(FALLBACK_COLOUR, width=1.5, style=Qt.PenStyle.DashLine)
        self.default_line = pg.InfiniteLine(angle=0, pen=dashed, label="default {value:g}",
                                            labelOpts={"position": 0.9, "color": FALLBACK_COLOUR})
        self.default_line.setVisible(False)
        self.plot.addItem(self.default_line)

        self.rule_list = QListWidget()
        self.rule_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.rule_list.customContextMenuRequested.connect(self._rule_menu)
        self.rule_list.itemChanged.connect(self._rule_renamed)
        self.rule_list.currentRowChanged.connect(lambda _: self._update_buttons())

        self.add_button = QPushButton("Add rule…")
        self.add_button.clicked.connect(self._ask_add_rule)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(lambda: self.remove_rule(self.rule_list.currentRow()))
        self.up_button = QPushButton("Up")
        self.up_button.clicked.connect(lambda: self.move_rule(self.rule_list.currentRow(), -1))
        self.down_button = QPushButton("Down")
        self.down_button.clicked.connect(lambda: self.move_rule(self.rule_list.currentRow(), 1))
        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Shape…")
        self.preset_combo.addItems(["Constant", "Linear", "V", "Smoothstep"])
        self.preset_combo.setToolTip("Replace the selected rule's curve by a preset shape")
        self.preset_combo.activated.connect(self._preset_chosen)

        self.rule_list.setMaximumHeight(120)
        self.rule_list.setMinimumHeight(60)
        for button in (self.up_button, self.down_button):
            button.setMaximumWidth(56)
        buttons = QHBoxLayout()
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(button)
        buttons.addWidget(self.preset_combo)
        buttons.addStretch(1)
        hint = QLabel("Drag points · double-click the plot to add a point, a point to remove it")
        hint.setWordWrap(True)
        hint.setEnabled(False)  # drawn in the muted text colour
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
        curves.addWidget(self.plot_widget, 1)
        curves.addWidget(self.summary)
        curves.addWidget(QLabel("<b>Rules</b> (first match wins)"))
        curves.addWidget(self.rule_list)
        curves.addLayout(buttons)
        curves.addWidget(hint)
        layout = QVBoxLayout(self)
        layout.addWidget(self.no_curves_label)
        layout.addWidget(self.curve_area, 1)
        layout.addWidget(self.settings_box)
        layout.addStretch(0)  # takes the room only while the curves are hidden
        self._column = layout

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
        self._redraw()

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
            curves = [p.name for p in spec.parameters if is_curve(spec.name, p.name)]
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
        target = self.target
        self._reset_items()
        self.curve_items.clear()
        self._curve_values.clear()
        rules = self.rules()
        stage_plan = self._stage_plan()
        if target is None:
            self.handles.setData([], [])
            self.default_line.setVisible(False)
            self._fill_rule_list(())
            return
        assert self._stage is not None
        low, high = curve_bounds(self._stage.merge_method, target.name)
        values = [v for rule in rules for v in edits.points(rule.value)]
        low, high = min([low, *values]), max([high, *values])  # show every point, even out of range
        self.handles.value_range = (low, high)
        self.plot.setLabel("left", target.name)
        self.plot.setYRange(low, high, padding=0.06)
        layout = self._layout(target, rules, stage_plan)
        if layout is None:
            self._draw_unplanned(rules)
        else:
            self._draw_planned(target, rules, *layout)
        default = _default(self._stage, target.name)
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        self.default_line.setVisible(not rules and numeric_default)
        if not rules:
            if numeric_default:
                self.default_line.setValue(default)
            uses = f"the merge uses the method's default {default:g}" if numeric_default else \
                UNSET_MEANING.get(target.name, "the merge goes without it")
            self.summary.setText(f"This recipe sets no {target.name} here, so {uses}. Add a rule to shape it.")
        self._fill_rule_list(rules)

    def _layout(self, target: CurveTarget, rules: tuple[FilterRule, ...], stage_plan: StagePlan | None
                ) -> tuple[tuple[OutputLayer, ...], dict[int | None, list[str]], str | None] | None:
        """Output layers, the tensor names per layer (None: non-layer tensors) and, without a
        full plan, the note why; None when even the recipe's layer ranges give no layers."""
        if stage_plan is not None and stage_plan.layers:
            return stage_plan.layers, _tensor_names(stage_plan, target), None
        assert self._stage is not None
        layers = layers_from_ranges(self._stage)
        if not layers:
            return None
        # One name per rule that the rule itself matches: each curve shows what its rule gives.
        names = [rule.filter or "" for rule in rules]
        error = getattr(self.live_plan, "error", None)
        note = f"Layers from the recipe's layer ranges: no full plan ({error})." if error else \
            "Layers from the recipe's layer ranges: the donors are not inspected yet."
        return layers, {layer.index: names for layer in layers}, note

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
        self.rule_warnings = _structural_warnings(rules)
        for r, rule in enumerate(rules):
            values = edits.points(rule.value)
            if not values:
                continue
            colour = _rule_colour(rule, r)
            ys = [float(interpolate_gradient(values, x)) for x in xs]
            self._curve_values[r] = ys
            self.curve_items[r] = self._pooled(self._curves, r)
            self.curve_items[r].setData(xs, ys, pen=pg.mkPen(colour, width=2), symbol=None)
            for p, v in enumerate(values):
                spots_x.append(p / (len(values) - 1) if len(values) > 1 else 0.0)
                spots_y.append(v)
                spots_data.append((r, p))
                brushes.append(pg.mkBrush(colour))
        self.plot.setLabel("bottom", "position in slice (no donors yet)")
        self.plot.setXRange(0, 1, padding=0.04)
        self.handles.setData(x=spots_x, y=spots_y, data=spots_data, brush=brushes, pen=pg.mkPen("w"))
        self.summary.setText("Add donors to see the curve over the output layers.")

    def _draw_planned(self, target: CurveTarget, rules: tuple[FilterRule, ...], layers: tuple[OutputLayer, ...],
                      by_layer: dict[int | None, list[str]], note: str | None) -> None:
        stage = self._stage
        assert stage is not None
        all_names = [n for names in by_layer.values() for n in names]
        self.rule_warnings = _structural_warnings(rules)
        for r, rule in enumerate(rules):
            if note is not None:  # names stand in for tensors: no finding about unmatched rules
                break
            if r not in self.rule_warnings and not any(rule.matches(n) for n in all_names):
                self.rule_warnings[r] = f"“{rule.filter}” matches no tensor of the donors: it is never used"
            elif r not in self.rule_warnings and not any(_winner(rules, n) == r for n in all_names):
                self.rule_warnings[r] = "every tensor it matches is taken by an earlier rule"

        seams = [layer.index for layer in layers if layer.position == 0]
        for k, seam in enumerate(seams[1:]):
            line = self._pooled(self._seams, k)
            line.setValue(seam - 0.5)
        curves = self._planned_curves(target, rules, layers, by_layer)
        spots_x, spots_y, spots_data, brushes = [], [], [], []
        for r, rule in enumerate(rules):
            colour = _rule_colour(rule, r)
            xs, ys, non_layer = curves[r]
            self._curve_values[r] = ys
            if all(math.isnan(y) for y in ys):
                xs, ys = [], []  # this rule takes no layer tensor
            self.curve_items[r] = self._pooled(self._curves, r)
            self.curve_items[r].setData(xs, ys, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=4,
                                        symbolBrush=colour, symbolPen=None, connect="finite")
            if non_layer is not None:
                marker = self._pooled(self._markers, r)
                marker.setData([NON_LAYER_X], [non_layer], pen=None, symbol="d", symbolSize=10,
                               symbolBrush=colour, symbolPen=pg.mkPen("k", width=0.5))
            values = edits.points(rule.value)
            for layer_start, length in _applied_slices(layers, target, stage):
                for p, v in enumerate(values):
                    frac = p / (len(values) - 1) if len(values) > 1 else 0.0
                    spots_x.append(layer_start + frac * max(0, length - 1))
                    spots_y.append(v)
                    spots_data.append((r, p))
                    brushes.append(pg.mkBrush(colour))
        self.handles.setData(x=spots_x, y=spots_y, data=spots_data, brush=brushes, pen=pg.mkPen("w", width=1.5))
        self.plot.setLabel("bottom", "output layer  (◆ −1: embeddings, norm, lm_head)" if note is None else
                           "output layer  (by the recipe's layer ranges)")
        self.plot.setXRange(NON_LAYER_X - 0.5 if note is None else -0.5, max(1, len(layers) - 1) + 0.5, padding=0.02)
        overridden = len(seams) - len(_applied_slices(layers, target, stage))
        extra = f"; {overridden} slice(s) override it with their own value" if overridden > 0 else ""
        self.summary.setText(f"{len(layers)} output layers in {len(seams)} slice(s); "
                             f"the curve restarts in every slice{extra}." + (f"\n{note}" if note else ""))

    def _planned_curves(self, target: CurveTarget, rules: tuple[FilterRule, ...], layers: tuple[OutputLayer, ...],
                        by_layer: dict[int | None, list[str]]
                        ) -> dict[int, tuple[list[int], list[float], float | None]]:
        """Per rule: output layers, the value it gives there (nan: no tensor takes this rule),
        and the value of the non-layer tensors it takes (None when it takes none)."""
        stage = self._stage
        assert stage is not None
        slices = _planned_slices(stage)
        default = _default(stage, target.name)
        curves = {}
        for r in range(len(rules)):
            xs, ys = [], []
            for layer in layers:
                if layer.slice_index >= len(slices):
                    continue
                scopes = _scopes(slices[layer.slice_index], stage, target.model)
                name = next((n for n in by_layer.get(layer.index, []) if _winner(rules, n) == r), None)
                value = evaluate_parameter(target.name, name, layer.x, scopes, default) if name else None
                xs.append(layer.index)
                ys.append(float(value) if isinstance(value, (int, float)) else float("nan"))
            non_layer = next((n for n in by_layer.get(None, []) if _winner(rules, n) == r), None)
            value = evaluate_parameter(target.name, non_layer, 0.0, _scopes(slices[0], stage, target.model),
                                       default) if non_layer and slices else None
            curves[r] = (xs, ys, float(value) if isinstance(value, (int, float)) else None)
        return curves

    def _fill_rule_list(self, rules: tuple[FilterRule, ...]) -> None:
        row = self.rule_list.currentRow()
        warning_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        with QSignalBlocker(self.rule_list):
            self.rule_list.clear()
            for r, rule in enumerate(rules):
                item = QListWidgetItem(rule_label(rule))
                item.setData(Qt.ItemDataRole.UserRole, rule.filter or "")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                item.setForeground(QColor(_rule_colour(rule, r)))
                values = ", ".join(f"{v:g}" for v in edits.points(rule.value))
                tip = f"value: [{values}]" if isinstance(rule.value, tuple) else f"value: {values}"
                if r in self.rule_warnings:
                    item.setIcon(warning_icon)
                    tip = f"{self.rule_warnings[r]}\n{tip}"
                item.setToolTip(tip)
                self.rule_list.addItem(item)
            if rules:
                self.rule_list.setCurrentRow(min(max(row, 0), len(rules) - 1))
        self._update_buttons()

    def _update_buttons(self) -> None:
        row, count = self.rule_list.currentRow(), self.rule_list.count()
        has_target = self.target is not None
        self.add_button.setEnabled(has_target)
        self.remove_button.setEnabled(0 <= row < count)
        self.up_button.setEnabled(0 < row < count)
        self.down_button.setEnabled(0 <= row < count - 1)
        self.preset_combo.setEnabled(0 <= row < count)

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

    def _redraw_curves_only(self) -> None:
        # Only the curves: the handles item is being dragged and moves its own spots.
        target, rules, stage_plan = self.target, self.rules(), self._stage_plan()
        if target is None:
            return
        layout = self._layout(target, rules, stage_plan)
        if layout is None:
            xs = [i / (UNPLANNED_SAMPLES - 1) for i in range(UNPLANNED_SAMPLES)]
            for r, rule in enumerate(rules):
                if r in self.curve_items:
                    values = edits.points(rule.value)
                    self._curve_values[r] = [float(interpolate_gradient(values, x)) for x in xs]
                    self.curve_items[r].setData(xs, self._curve_values[r])
            return
        for r, (xs, ys, _) in self._planned_curves(target, rules, *layout[:2]).items():
            self._curve_values[r] = ys
            if r in self.curve_items and not all(math.isnan(y) for y in ys):
                self.curve_items[r].setData(xs, ys)

    def _commit_point(self, rule: int, point: int, old: float, new: float) -> None:
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

    def apply_preset(self, rule: int, preset: str) -> None:
        """Give ``rule`` a preset shape from its current first to last value (0 → 1 when flat)."""
        values = edits.points(self.rules()[rule].value) or (0.0,)
        start, end = values[0], values[-1]
        if start == end and self._stage is not None:
            start, end = curve_bounds(self._stage.merge_method, self.target.name if self.target else "t")
            start, end = max(start, 0.0), min(end, 1.0)
        self._edit(lambda s, loc, n: edits.apply_preset(s, loc, n, rule, preset, start, end),
                   f"Shape rule: {preset}")

    def convert_rule(self, rule: int) -> None:
        """Toggle a rule between a scalar and a gradient."""
        fn = edits.to_scalar if isinstance(self.rules()[rule].value, tuple) else edits.to_gradient
        self._edit(lambda s, loc, n: fn(s, loc, n, rule), "Convert rule value")

    def _rule_renamed(self, item: QListWidgetItem) -> None:
        row = self.rule_list.row(item)
        text = item.text().strip()
        if text.startswith("fallback"):
            text = ""
        self.rename_rule(row, text or None)

    def _ask_add_rule(self) -> None:
        text, ok = QInputDialog.getText(self, "Add rule", "Filter (a substring of tensor names, e.g. self_attn):")
        if ok:
            self.add_rule(text.strip() or None)

    def _preset_chosen(self, index: int) -> None:
        row = self.rule_list.currentRow()
        if index > 0 and row >= 0:
            self.apply_preset(row, edits.PRESETS[index - 1])
        self.preset_combo.setCurrentIndex(0)

    def _rule_menu(self, pos) -> None:
        row = self.rule_list.indexAt(pos).row()
        menu = QMenu(self)
        menu.addAction("Add rule…", self._ask_add_rule)
        if row >= 0:
            menu.addAction("Add point", lambda: self.add_point(row))
            is_gradient = isinstance(self.rules()[row].value, tuple)
            menu.addAction("Make constant" if is_gradient else "Make gradient", lambda: self.convert_rule(row))
            shapes = menu.addMenu("Shape")
            for preset in edits.PRESETS:
                action = QAction(preset.capitalize(), shapes)
                action.triggered.connect(lambda _=False, p=preset: self.apply_preset(row, p))
                shapes.addAction(action)
            menu.addAction("Remove rule", lambda: self.remove_rule(row))
        menu.exec(self.rule_list.viewport().mapToGlobal(pos))

    def _scene_clicked(self, ev) -> None:
        if ev.double() and not ev.isAccepted() and ev.button() == Qt.MouseButton.LeftButton:
            row = self.rule_list.currentRow()
            if row >= 0:
                self.add_point(row)

    # --- geometry, for tests and tooltips ------------------------------------------------------

    def handle_positions(self, rule: int, point: int) -> list[QPointF]:
        """Data coordinates of every copy of a control point."""
        d = self.handles.data
        return [QPointF(float(d["x"][i]), float(d["y"][i])) for i in range(len(d)) if tuple(d["data"][i]) == (rule, point)]

    def curve_values(self, rule: int) -> list[float]:
        """The drawn curve of ``rule``, one value per output layer (nan where it gives none)."""
        return list(self._curve_values[rule])


def _rule_colour(rule: FilterRule, index: int) -> str:
    return FALLBACK_COLOUR if rule.filter in (None, "*") else RULE_COLOURS[index % len(RULE_COLOURS)]


def _winner(rules: tuple[FilterRule, ...], name: str) -> int | None:
    return next((i for i, r in enumerate(rules) if r.matches(name)), None)


def _structural_warnings(rules: tuple[FilterRule, ...]) -> dict[int, str]:
    fallback = edits.fallback_index(rules)
    if fallback is None:
        return {}
    return {r: "shadowed: the fallback rule above it matches every tensor first"
            for r in range(fallback + 1, len(rules))}


def _tensor_names(stage_plan: StagePlan, target: CurveTarget) -> dict[int | None, list[str]]:
    """Names of the tensors the target's parameter applies to, by output layer (None: non-layer)."""
    by_layer: dict[int | None, list[str]] = {}
    for tensor in stage_plan.tensors:
        names = [tensor.name] if target.model is None else \
            [s.tensor for s in tensor.sources if s.model == target.model]
        by_layer.setdefault(tensor.layer, []).extend(names)
    return by_layer


def layers_from_ranges(stage: Stage) -> tuple[OutputLayer, ...]:
    """The output layers a ``slices:`` stage gives by its layer ranges alone (first source of
    each slice), as the plan numbers them; empty for a ``models:`` stage."""
    layers: list[OutputLayer] = []
    slices = [s for s in stage.slices or () if s.sources]
    for k, slice_ in enumerate(slices):
        start, end = slice_.sources[0].layer_range
        length, first = max(0, end - start), len(layers)
        layers += [OutputLayer(first + p, k, p, length, ()) for p in range(length)]
    return tuple(layers)


def _planned_slices(stage: Stage):
    """The slices the plan numbers (``models:`` form: one slice of every entry)."""
    if stage.slices is not None:
        return [s for s in stage.slices if s.sources]
    entries = list(stage.models or ())
    return [Slice(tuple(SliceSource(e.model, (0, 0), e.parameters) for e in entries))] if entries else []


def _scopes(slice_, stage: Stage, model: str | None) -> tuple[Parameters, ...]:
    own = tuple(s.parameters for s in slice_.sources if s.model == model) if model else ()
    return own + (slice_.parameters, stage.parameters)


def _default(stage: Stage, name: str):
    spec = method_spec(stage.merge_method)
    p = spec.parameter(name) if spec else None
    return None if p is None or p.required else p.default


def _applied_slices(layers: tuple[OutputLayer, ...], target: CurveTarget, stage: Stage) -> list[tuple[int, int]]:
    """(first output layer, length) of each slice where the edited location is the one in effect."""
    slices = _planned_slices(stage)
    raw = [i for i, s in enumerate(stage.slices or ()) if s.sources] if stage.slices is not None else [0]
    result = []
    for layer in layers:
        if layer.position != 0 or layer.slice_index >= len(slices):
            continue
        slice_ = slices[layer.slice_index]
        loc = target.location
        if loc.slice_index is not None and raw[layer.slice_index] != loc.slice_index:
            continue
        if loc.is_top_level and target.name in slice_.parameters:
            continue
        result.append((layer.index, layer.slice_length))
    return result
