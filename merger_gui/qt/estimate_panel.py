"""The live estimate: size and GPU memory of the merged model, against context length."""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QBoxLayout, QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QSpinBox, QVBoxLayout,
    QWidget,
)
import pyqtgraph as pg  # after PySide6, so pyqtgraph binds to it

from merger_gui.core.errors import UserError
from merger_gui.core.estimator import (
    GIB_NOTE, EstimateOptions, RecipeEstimate, estimate_plan, format_context, gib_to_bytes, kv_cache,
)
from merger_gui.core.runtime_presets import PRESETS
from merger_gui.core.plan import Plan
from merger_gui.core.units import GIB, format_count, format_size

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .eliding_combo import ElidingComboBox
from .themed_plot import ThemedPlotWidget

WEIGHT_FORMATS = ("stored", "bf16", "fp16", "fp8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS")
KV_TYPES = ("f16", "bf16", "q8_0", "q4_0", "f32")
DEBOUNCE_MS = 120
CHART_POINTS = 48
SIDE_BY_SIDE_WIDTH = 900
FITS_COLOR, TOO_BIG_COLOR = "#15803d", "#dc2626"


def _size(nbytes: int) -> str:
    return format_size(nbytes, digits=2)


class EstimatePanel(QWidget):
    """Figures of the estimator for the current recipe's final output, recomputed (debounced)
    whenever the plan or an option changes, and a memory-versus-context chart.

    Args:
        document: The open recipe (only for its identity; figures follow ``live_plan``).
        live_plan: Emits ``plan_changed(Plan | None)``.
        registry: Donor metadata, for the comparison with each donor.
    """

    estimate_changed = Signal(object)  # RecipeEstimate | None

    def __init__(self, document: RecipeDocument, live_plan, registry: DonorRegistry,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.live_plan = live_plan
        self.registry = registry
        self.estimate: RecipeEstimate | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.recompute)

        self.weights_combo = ElidingComboBox(6)
        self.weights_combo.addItems(WEIGHT_FORMATS)
        self.weights_combo.setCurrentText("fp16")
        self.weights_combo.setToolTip("Weight format: a float dtype or a GGUF quantisation mixture")
        self.kv_combo = ElidingComboBox(6)
        self.kv_combo.addItems(KV_TYPES)
        self.runtime_combo = ElidingComboBox(6)
        self.runtime_combo.addItems(list(PRESETS))
        self.context_spin = QSpinBox()
        self.context_spin.setRange(1, 1 << 21)
        self.context_spin.setSingleStep(1024)
        self.context_spin.setValue(4096)
        self.context_spin.setSuffix(" tokens")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 512)
        self.gpu_spin = QDoubleSpinBox()
        self.gpu_spin.setRange(0.5, 2048)
        self.gpu_spin.setDecimals(1)
        self.gpu_spin.setValue(24.0)
        self.gpu_spin.setSuffix(" GiB")
        for combo in (self.weights_combo, self.kv_combo, self.runtime_combo):
            combo.currentIndexChanged.connect(lambda _: self.schedule())
        for spin in (self.context_spin, self.batch_spin, self.gpu_spin):
            spin.valueChanged.connect(lambda _: self.schedule())

        options = QGroupBox("Run it with")
        form = QGridLayout(options)
        fields = (("Weights", self.weights_combo), ("KV cache", self.kv_combo), ("Context", self.context_spin),
                  ("Batch", self.batch_spin), ("GPU", self.gpu_spin), ("Runtime", self.runtime_combo))
        for i, (title, field) in enumerate(fields):  # two label/field pairs a row: fits a narrow dock
            field.setMinimumWidth(90)
            form.addWidget(QLabel(title), i // 2, 2 * (i % 2))
            form.addWidget(field, i // 2, 2 * (i % 2) + 1)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)
        self.gpu_spin.setToolTip("GPU memory to fit the model in")

        figures = QGroupBox("Merged model")
        grid = QGridLayout(figures)
        self.figure_labels: dict[str, QLabel] = {}
        rows = (("params", "Parameters"), ("layers", "Layers"), ("weights", "Weights"), ("kv", "KV cache"),
                ("compute", "Compute buffer"), ("overhead", "Overhead"), ("total", "Total"),
                ("max_context", "Max context"), ("merge", "Merge needs"))
        for row, (key, title) in enumerate(rows):
            name = QLabel(title)
            value = QLabel("—")
            value.setObjectName(f"estimate_{key}")
            value.setWordWrap(True)
            if key == "total":
                font = value.font()
                font.setBold(True)
                value.setFont(font)
                name.setFont(font)
            grid.addWidget(name, row, 0)
            grid.addWidget(value, row, 1)
            self.figure_labels[key] = value
        grid.setColumnStretch(1, 1)
        self.fit_label = QLabel()
        self.fit_label.setObjectName("estimate_fit")
        self.fit_label.setWordWrap(True)
        self.fit_label.hide()
        self.donor_label = QLabel()
        self.donor_label.setWordWrap(True)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setStyleSheet("color: #b35900;")

        self.chart = ThemedPlotWidget()
        self.chart.setMinimumHeight(120)
        chart_item = self.chart.getPlotItem()
        chart_item.setMenuEnabled(False)
        chart_item.hideButtons()
        chart_item.getViewBox().setMouseEnabled(x=False, y=False)
        chart_item.showGrid(x=True, y=True, alpha=0.25)
        chart_item.setLabel("bottom", "context (k tokens)")
        chart_item.setLabel("left", "GiB")
        self.memory_curve = chart_item.plot([], [], pen=pg.mkPen("#4a90e2", width=2), name="total")
        budget_pen = pg.mkPen("#e8684a", width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine)
        self.budget_line = pg.InfiniteLine(angle=0, pen=budget_pen, label="GPU {value:.1f} GiB",
                                           labelOpts={"position": 0.12, "color": "#e8684a"})
        self.context_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888888", width=1))
        chart_item.addItem(self.budget_line)
        chart_item.addItem(self.context_line)

        self.top = QBoxLayout(QBoxLayout.Direction.TopToBottom)
        self.top.addWidget(options)
        self.top.addWidget(figures, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(self.top)
        layout.addWidget(self.fit_label)
        layout.addWidget(self.donor_label)
        layout.addWidget(self.status_label)
        layout.addWidget(self.chart, 1)
        note = QLabel(f"{GIB_NOTE}; compute buffer and overhead are the runtime's rules of thumb.")
        note.setWordWrap(True)
        note.setEnabled(False)  # drawn in the muted text colour
        layout.addWidget(note)

        live_plan.plan_changed.connect(self.schedule)  # bound: dropped when the panel is deleted
        registry.changed.connect(self.schedule)
        self.recompute()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        # Options beside the figures when there is room, above them in a narrow dock.
        wide = event.size().width() >= SIDE_BY_SIDE_WIDTH
        self.top.setDirection(QBoxLayout.Direction.LeftToRight if wide else QBoxLayout.Direction.TopToBottom)

    def options(self) -> EstimateOptions:
        """The options the controls describe."""
        return EstimateOptions(
            context=self.context_spin.value(), batch=self.batch_spin.value(),
            weights=self.weights_combo.currentText(), kv_dtype=self.kv_combo.currentText(),
            runtime=self.runtime_combo.currentText(), gpu_memory_bytes=gib_to_bytes(self.gpu_spin.value()),
        )

    def schedule(self, *_: object) -> None:
        """Recompute after a short pause, so a drag does not estimate on every mouse move."""
        self._timer.start()

    def recompute(self) -> None:
        """Estimate the live plan now and show it."""
        self._timer.stop()
        plan: Plan | None = getattr(self.live_plan, "plan", None)
        try:
            self.estimate = estimate_plan(plan, self.registry.donors, self.options()) if plan else None
            error = getattr(self.live_plan, "error", None)
            message = None if plan else f"No estimate yet: {error.rstrip('.')}." if error else \
                "No estimate yet: add the recipe's donors (or shape profiles)."
        except UserError as exc:
            self.estimate, message = None, str(exc)
        self.status_label.setText(message or "")
        self.status_label.setVisible(bool(message))
        self._show()
        self.estimate_changed.emit(self.estimate)

    def _show(self) -> None:
        labels = self.figure_labels
        if self.estimate is None:
            for label in labels.values():
                label.setText("—")
            self.donor_label.setText("")
            self._show_fit(None, 0)
            self.memory_curve.setData([], [])
            gpu = self.gpu_spin.value()  # empty axes at a sensible scale, not pyqtgraph's ±0.5
            self.budget_line.setValue(gpu)
            self.context_line.setValue(self.context_spin.value() / 1024)
            self.chart.getPlotItem().setYRange(0, gpu * 1.08, padding=0)
            self.chart.getPlotItem().setXRange(0, max(8, 2 * self.context_spin.value() / 1024), padding=0.02)
            return
        final = self.estimate.final
        options = final.options
        labels["params"].setText(f"{final.params:,} ({format_count(final.params)})")
        stages = self.estimate.stage_labels
        of_stages = f"  (final of {len(stages)} stages)" if len(stages) > 1 else ""
        labels["layers"].setText(str(final.num_layers) + of_stages)
        host = f", {_size(final.host_weights_bytes)} of it in system RAM" if final.host_weights_bytes else ""
        labels["weights"].setText(f"{_size(final.weights_bytes)} ({final.weights_label}{host})")
        per_token = final.kv.bytes_per_token
        windowed = (f"; {final.kv.windowed_layer_count} sliding-window layers, full cache "
                    f"{_size(final.kv.full_bytes)}") if final.kv.windowed_layer_count else ""
        labels["kv"].setText(f"{_size(final.kv_cache_bytes)} at {format_context(options.context)} × "
                             f"{options.batch} ({per_token / 1024:,.0f} KiB/token{windowed})")
        labels["compute"].setText(f"{_size(final.compute_buffer_bytes)} ({final.compute_label})")
        labels["overhead"].setText(f"{_size(final.overhead_bytes)} ({final.overhead_label})")
        labels["total"].setText(_size(final.total_bytes))
        self._show_fit(final.total_bytes, options.gpu_memory_bytes or 0)
        budget = format_size(options.gpu_memory_bytes or 0)
        if final.max_context is None:
            labels["max_context"].setText(f"more than 128M tokens fit in {budget}")
        elif final.max_context == 0:
            labels["max_context"].setText(f"does not fit in {budget}, even at 1 token")
        else:
            labels["max_context"].setText(f"{final.max_context:,} tokens in {budget}")
        trained = final.trained_context
        if trained and (final.max_context is None or final.max_context > trained):
            labels["max_context"].setText(f"{labels['max_context'].text()} (the model is trained for {trained:,})")
        merge = self.estimate.merge
        download = f"download {_size(merge.download_bytes)}, " if merge.download_bytes else ""
        labels["merge"].setText(f"{download}disk {_size(merge.disk_bytes)}, peak RAM "
                                f"{_size(merge.peak_ram_bytes)}")
        self.donor_label.setText("<br>".join(f"<b>{c.describe()}</b> (donor total {_size(c.estimate.total_bytes)})"
                                             for c in self.estimate.donors))
        self._draw_chart()

    def _show_fit(self, total: int | None, budget: int) -> None:
        """Say in words and colour whether the total fits the GPU; the total turns red when not."""
        fits = total is None or not budget or total <= budget
        self.figure_labels["total"].setStyleSheet("" if fits else f"color: {TOO_BIG_COLOR};")
        if total is None or not budget:
            self.fit_label.hide()
            return
        gpu = f"the {format_size(budget)} GPU"
        if fits:
            text = f"Fits {gpu}, with {_size(budget - total)} to spare."
        else:
            text = (f"Does not fit {gpu}: {_size(total - budget)} too much. Try a smaller weight format, "
                    "a shorter context or a quantised KV cache.")
        self.fit_label.setText(text)
        self.fit_label.setStyleSheet(f"color: {FITS_COLOR if fits else TOO_BIG_COLOR}; font-weight: bold;")
        self.fit_label.show()

    def _draw_chart(self) -> None:
        assert self.estimate is not None
        final = self.estimate.final
        options = final.options
        plan: Plan | None = getattr(self.live_plan, "plan", None)
        if plan is None:
            return
        model = plan.final.output
        fixed = final.total_bytes - final.kv_cache_bytes - final.compute_buffer_bytes
        top = max(2 * options.context, min(final.max_context or 0, 16 * options.context), 8192)
        contexts = [max(1, round(top * i / (CHART_POINTS - 1))) for i in range(CHART_POINTS)]
        totals = []
        for context in contexts:
            kv = kv_cache(model, context, options.batch, options.kv_dtype, options.preset.window_margin)
            counted = kv.windowed_bytes if options.sliding_window else kv.full_bytes
            compute = options.preset.compute_buffer_bytes(model, context, options.batch)
            totals.append((fixed + counted + compute) / GIB)
        self.memory_curve.setData([c / 1024 for c in contexts], totals)
        self.budget_line.setValue((options.gpu_memory_bytes or 0) / GIB)
        self.context_line.setValue(options.context / 1024)
        self.chart.getPlotItem().setYRange(0, max(max(totals), self.gpu_spin.value()) * 1.08, padding=0)
        self.chart.getPlotItem().setXRange(0, top / 1024, padding=0.02)

    def figure(self, key: str) -> str:
        """The text shown for figure ``key`` (``params``, ``layers``, ``total``…)."""
        return self.figure_labels[key].text()
