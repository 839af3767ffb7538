"""The Analysis tab: where to cut. Two donors of the current stage compared layer by layer (weights),
each layer's change of the hidden state, the stage's seams, and suggestions that apply in one step."""

from __future__ import annotations

from functools import partial

import threading
from collections.abc import Iterator

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QColor, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QComboBox, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar,
    QPushButton, QSpinBox, QStyle, QStyleOptionButton, QStylePainter, QVBoxLayout, QWidget,
)
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from merger_gui.core.cut_suggestions import CutSuggestion, drop_block_suggestion, join_suggestion
from merger_gui.core.plan import plan_layers
from merger_gui.core.recipe import Stage
from merger_gui.engine.activation_analysis import ActivationProgress, Seam, stage_seams
from merger_gui.engine.layer_similarity import AnalysisCancelled, SimilarityProgress

from .analysis_job import AnalysisReady, AnalysisRequest, AnalysisResult, run_analysis
from .job_runner import JobRunner
from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .merge_panel import ERROR_STYLE
from .themed_plot import ThemedPlotWidget

NO_BASE = "(no base)"
COLOR_MAP = "viridis"
AXIS_SPACE = 48  # px for an axis with its label, the same on the heatmap and on the strip beside it
SUGGESTION_MIN_W = 160  # a long suggestion is elided rather than widening the dock


class SuggestionButton(QPushButton):
    """A suggestion: a button as the style draws one in either theme, its sentence left-aligned and
    elided to fit (a style sheet for the alignment would make it a flat box)."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(min(SUGGESTION_MIN_W, hint.width()), hint.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QStylePainter(self)
        option = QStyleOptionButton()
        self.initStyleOption(option)
        text, option.text = option.text, ""
        painter.drawControl(QStyle.ControlElement.CE_PushButton, option)  # bevel and focus frame, no label
        margin = 2 * self.style().pixelMetric(QStyle.PixelMetric.PM_ButtonMargin, option, self)
        room = option.rect.adjusted(margin, 0, -margin, 0)
        shown = self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, room.width())
        painter.drawItemText(room, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), self.palette(),
                             self.isEnabled(), shown, QPalette.ColorRole.ButtonText)


class AnalysisPanel(QWidget):
    """Pick two donors of the current stage, analyse them off the GUI thread, act on the suggestions."""

    sigResult = Signal(object)  # the AnalysisResult shown, for the designer's overlay

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.registry = document, registry
        self.runner = JobRunner(self, what="analysis")
        self.result: AnalysisResult | None = None
        self.suggestions: list[CutSuggestion] = []

        self.first_combo, self.second_combo, self.base_combo = QComboBox(), QComboBox(), QComboBox()
        self._picked: dict[QComboBox, str] = {}  # what the user chose; else the stage's order decides
        for combo in (self.first_combo, self.second_combo):
            combo.activated.connect(partial(self._pick, combo))
        self.block_spin = QSpinBox()
        self.block_spin.setRange(1, 64)
        self.block_spin.setValue(8)
        self.block_spin.setToolTip("Size of the blocks of layers whose change is measured (PruneMe uses 8)")
        form = QFormLayout()
        form.addRow("Donor", self.first_combo)
        form.addRow("Against", self.second_combo)
        form.addRow("Base", self.base_combo)
        form.addRow("Block", self.block_spin)

        self.analyse_button = QPushButton("Analyse")
        self.analyse_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.runner.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.analyse_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.seam_list = QListWidget()
        self._fit_seam_list()
        self.seam_list.setToolTip("The current stage's seams: the distance between what one layer outputs and what "
                                  "the next normally receives (brighter: a bigger jump)")
        self.suggestion_box = QVBoxLayout()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addLayout(self.suggestion_box)  # first: what can be done in one click
        layout.addWidget(QLabel("Seams of the current stage"))
        layout.addWidget(self.seam_list)
        layout.addLayout(self._plots(), 1)

        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.running_changed.connect(self.update_state)
        registry.changed.connect(self.refresh_donors)
        document.recipe_changed.connect(self.refresh_donors)
        document.current_stage_changed.connect(self.refresh_donors)
        self.refresh_donors()

    def _plots(self) -> QGridLayout:
        """The heatmap (rows: the first donor's layers, columns: the second's) with a distance strip beside
        each donor's axis: the first's to the left, the second's below."""
        self.heatmap_plot = ThemedPlotWidget()
        self.heatmap = pg.ImageItem(axisOrder="row-major")
        self.heatmap_plot.addItem(self.heatmap)
        self.heatmap_plot.setMinimumHeight(160)
        self.color_bar = pg.ColorBarItem(colorMap=COLOR_MAP, interactive=False, label="cosine")
        self.color_bar.setImageItem(self.heatmap, insert_in=self.heatmap_plot.getPlotItem())
        self.first_strip, self.second_strip = ThemedPlotWidget(), ThemedPlotWidget()
        self.first_strip.setMaximumWidth(90)
        self.second_strip.setMaximumHeight(70)
        self.first_strip.setYLink(self.heatmap_plot)
        for plot in (self.heatmap_plot, self.first_strip):
            plot.invertY(True)  # layer 0 at the top, as in the designer's stacks
        self.second_strip.setXLink(self.heatmap_plot)
        self._align_strips()
        self.first_bars = pg.BarGraphItem(x0=[], y=[], width=[], height=0.8, brush="#7aa6d8")
        self.second_bars = pg.BarGraphItem(x=[], y0=[], height=[], width=0.8, brush="#d89a7a")
        self.first_strip.addItem(self.first_bars)
        self.second_strip.addItem(self.second_bars)
        self.first_strip.setToolTip("Layer distance of the first donor: how much each layer changes the hidden state")
        self.second_strip.setToolTip("Layer distance of the second donor")
        grid = QGridLayout()
        grid.addWidget(self.first_strip, 0, 0)
        grid.addWidget(self.heatmap_plot, 0, 1)
        grid.addWidget(self.second_strip, 1, 1)
        return grid

    def _align_strips(self) -> None:
        """Give each strip the heatmap's margins on its linked axis, so bars line up with rows and columns:
        the same axis sizes, a label like the heatmap's, and room for the colour bar right of the lower strip."""
        heatmap = self.heatmap_plot.getPlotItem()
        for axis in ("left", "bottom"):
            heatmap.getAxis(axis).setStyle(autoExpandTextSpace=False)
        heatmap.getAxis("left").setWidth(AXIS_SPACE)
        heatmap.getAxis("bottom").setHeight(AXIS_SPACE)
        first, second = self.first_strip.getPlotItem(), self.second_strip.getPlotItem()
        first.getAxis("bottom").setHeight(AXIS_SPACE)
        second.getAxis("left").setWidth(AXIS_SPACE)
        for strip, axis in ((first, "bottom"), (second, "left")):
            strip.getAxis(axis).enableAutoSIPrefix(False)  # "(x0.001)" would not fit the narrow strip
            strip.setLabel(axis, "distance")
        spacer = pg.GraphicsWidget()  # stands where the heatmap has its colour bar
        second.layout.addItem(spacer, 2, 5)
        second.layout.setColumnFixedWidth(4, 5)
        self.color_bar.geometryChanged.connect(lambda: spacer.setFixedWidth(self.color_bar.geometry().width()))

    def _fit_seam_list(self) -> None:
        """The seam list as tall as its seams, one to four rows (it scrolls beyond)."""
        rows = min(4, max(1, self.seam_list.count()))
        row_h = self.seam_list.sizeHintForRow(0) if self.seam_list.count() else self.fontMetrics().height() + 4
        self.seam_list.setFixedHeight(rows * row_h + 2 * self.seam_list.frameWidth() + 2)

    # --- inputs ------------------------------------------------------------------------------

    def stage_donors(self) -> list[str]:
        """The current stage's donors with local weights."""
        stage = self.document.recipe.stages[self.document.current_stage] if self.document.recipe.stages else None
        models = stage.referenced_models if stage is not None else ()
        return [m for m in models if (info := self.registry.donor(m)) is not None and info.path]

    def refresh_donors(self, *_: object) -> None:
        donors = self.stage_donors()
        others = [n for n, info in self.registry.donors.items() if info.path and n not in donors]
        first = _refill(self.first_combo, donors, self._picked.get(self.first_combo, ""))
        second = self._picked.get(self.second_combo, "")
        if second == first or second not in donors:
            second = next((n for n in donors if n != first), "")
        _refill(self.second_combo, donors, second)
        _refill(self.base_combo, [NO_BASE, *others, *donors], self.base_combo.currentText())
        self._show_suggestions()
        self.update_state()

    def _pick(self, combo: QComboBox, _index: int) -> None:
        self._picked[combo] = combo.currentText()
        self.refresh_donors()

    def update_state(self, *_: object) -> None:
        running = self.runner.is_running
        ready = self.first_combo.currentText() != self.second_combo.currentText() and self.second_combo.count() > 0
        self.analyse_button.setEnabled(not running and ready)
        self.cancel_button.setEnabled(running)

    def request(self) -> AnalysisRequest:
        names = (self.first_combo.currentText(), self.second_combo.currentText())
        donors = tuple((name, self.registry.donors[name]) for name in names)
        base_name = self.base_combo.currentText()
        base = (base_name, self.registry.donors[base_name]) if base_name not in ("", NO_BASE) else None
        seams = tuple(self._seams())
        used = {m for s in seams for m in (s.source.model, s.target.model)}
        folders = {m: info for m in used if (info := self.registry.donor(m)) is not None and info.path}
        layers = min(info.num_layers for _, info in donors)
        return AnalysisRequest(donors, base, seams, folders, max(1, min(self.block_spin.value(), layers - 1)))

    def _seams(self) -> list[Seam]:
        """The current stage's seams between donors with local weights (none when it cannot be planned)."""
        index = self.document.current_stage
        stage = self.document.recipe.stages[index]
        try:
            layer_map = plan_layers(stage, self.registry.donors)
        except Exception:  # noqa: BLE001 - an unplannable stage has no seams; the Problems dock says why
            return []
        local = set(self.stage_donors())
        return [s for s in stage_seams(stage.name or str(index + 1), layer_map)
                if {s.source.model, s.target.model} <= local]

    # --- running -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Analyse the chosen donors on a worker thread; False when there is nothing to analyse."""
        if self.runner.is_running or not self.analyse_button.isEnabled():
            return False
        request = self.request()
        self.progress_bar.setValue(0)
        self.status_label.setStyleSheet("")
        self.status_label.setText(f"Analysing {request.donors[0][0]} and {request.donors[1][0]}…")

        def job(cancel: threading.Event) -> Iterator[object]:
            return run_analysis(request, cancel)

        self.runner.start(job, (AnalysisCancelled,))
        return True

    def _on_progress(self, event: object) -> None:
        if isinstance(event, SimilarityProgress):
            self._progress(0.5 * event.done / max(1, event.total), f"weights: {event.message}")
        elif isinstance(event, ActivationProgress):
            self._progress(0.5 + 0.5 * event.step / max(1, event.steps), f"activations: {event.message}")
        elif isinstance(event, AnalysisReady):
            self.show_result(event.result)

    def _progress(self, fraction: float, message: str) -> None:
        self.progress_bar.setValue(int(1000 * min(1.0, fraction)))
        self.status_label.setText(message)

    def _on_finished(self, last: object) -> None:
        self.progress_bar.setValue(1000)
        if isinstance(last, AnalysisReady):
            result = last.result
            cached = f" ({result.cached} part{'s' * (result.cached != 1)} from the cache)" if result.cached else ""
            self.status_label.setText("\n".join([f"Analysed {' and '.join(result.donors)}{cached}", *result.notes]))

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setStyleSheet(ERROR_STYLE)
        self.status_label.setText(f"The analysis failed: {message}")

    def _on_cancelled(self) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setText("Cancelled")

    # --- results -----------------------------------------------------------------------------

    def show_result(self, result: AnalysisResult) -> None:
        """The heatmap, the distance strips, the seams and the suggestions of ``result``."""
        self.result = result
        if result.similarity is not None:
            matrix = np.asarray(result.similarity, dtype=np.float32)
            self.heatmap.setImage(matrix, autoLevels=False)
            self.color_bar.setLevels((float(matrix.min()), float(matrix.max()) + 1e-9))
            self.heatmap_plot.getPlotItem().setLabels(left=result.donors[0], bottom=result.donors[1])
        first = result.layer_distance.get(result.donors[0], [])
        second = result.layer_distance.get(result.donors[1], [])
        self.first_bars.setOpts(x0=np.zeros(len(first)), y=np.arange(len(first)) + 0.5, width=first)
        self.second_bars.setOpts(x=np.arange(len(second)) + 0.5, y0=np.zeros(len(second)), height=second)
        self._show_seams(result)
        self._show_suggestions()
        self.sigResult.emit(result)

    def _show_seams(self, result: AnalysisResult) -> None:
        self.seam_list.clear()
        top = max((s.distance for s in result.seams), default=0.0) or 1.0
        colors = pg.colormap.get(COLOR_MAP)
        for seam in result.seams:
            source, target = seam.seam.source, seam.seam.target
            item = QListWidgetItem(f"{source.model} {source.layer} → {target.model} {target.layer}: "
                                   f"{seam.distance:.3f} (closest input: {target.model} {seam.best_to_layer})")
            color = QColor(colors.map(seam.distance / top, mode="qcolor"))
            item.setBackground(color)
            item.setForeground(QColor("black" if color.lightnessF() > 0.5 else "white"))
            item.setToolTip(f"output layer {seam.seam.index} of stage {seam.seam.stage}")
            self.seam_list.addItem(item)
        self._fit_seam_list()

    def _show_suggestions(self) -> None:
        """One button per suggestion for the current stage (recomputed after every edit)."""
        while (item := self.suggestion_box.takeAt(0)) is not None:
            if (widget := item.widget()) is not None:
                widget.deleteLater()
        self.suggestions = self._suggestions()
        for suggestion in self.suggestions:
            button = SuggestionButton(suggestion.text)
            button.setToolTip(f"{suggestion.text}\n\nApplies to the current stage as one undo step.")
            button.clicked.connect(lambda _=False, s=suggestion: self.apply(s))
            self.suggestion_box.addWidget(button)

    def _suggestions(self) -> list[CutSuggestion]:
        result, recipe = self.result, self.document.recipe
        if result is None or not recipe.stages:
            return []
        stage = recipe.stages[self.document.current_stage]
        found = [drop_block_suggestion(stage, name, blocks, result.block)
                 for name, blocks in result.block_distance.items()]
        current = {(s.source, s.target) for s in self._seams()}
        for seam in result.seams:
            if (seam.seam.source, seam.seam.target) in current:
                found.append(self._join(stage, seam.seam, seam.best_to_layer))
        return [s for s in found if s is not None]

    def _join(self, stage: Stage, seam: Seam, best: int) -> CutSuggestion | None:
        try:
            layer_map = plan_layers(stage, self.registry.donors)
        except Exception:  # noqa: BLE001 - see _seams
            return None
        slice_index = layer_map.layers[seam.index].slice_index
        source, target = seam.source, seam.target
        return join_suggestion(stage, slice_index, (source.model, source.layer),
                               (target.model, target.layer), best, self._donor_layers(target.model))

    def _donor_layers(self, name: str) -> int:
        info = self.registry.donor(name)
        return info.num_layers if info is not None else 0

    def apply(self, suggestion: CutSuggestion) -> None:
        """Apply a suggestion to the current stage as one undo step."""
        self.document.apply_to_stage(suggestion.edit, suggestion.text)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.runner.shutdown()
        super().closeEvent(event)


def _refill(combo: QComboBox, names: list[str], wanted: str) -> str:
    """Set ``combo``'s items to ``names`` (signals blocked), showing ``wanted`` if there, else the first."""
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    combo.setCurrentIndex(names.index(wanted) if wanted in names else 0 if names else -1)
    combo.blockSignals(False)
    return combo.currentText()
