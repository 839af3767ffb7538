"""The MoE's estimate: total and active parameters, weights, KV cache and GPU memory for a chosen context."""

from __future__ import annotations

from PySide6.QtWidgets import QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QSpinBox, QWidget

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.core.estimator import EstimateOptions, MoeEstimate, estimate_moe, format_context, gib_to_bytes
from merger_gui.core.moe_recipe import MoeRecipe
from merger_gui.core.units import format_count, format_size

from .eliding_combo import ElidingComboBox
from .estimate_panel import FITS_COLOR, KV_TYPES, TOO_BIG_COLOR, WEIGHT_FORMATS

FIGURES = (("params", "Parameters"), ("weights", "Weights"), ("kv", "KV cache"), ("total", "GPU memory"))


class MoeEstimateBox(QGroupBox):
    """Options (weights, KV cache type, context, GPU) beside the figures of the MoE they describe;
    :meth:`show_moe` recomputes them (after each edit), as does any change of an option."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Estimate", parent)
        self.estimate: MoeEstimate | None = None
        self._recipe: MoeRecipe | None = None
        self._base: DonorInfo | None = None
        self.weights_combo = ElidingComboBox(6)
        self.weights_combo.addItems(WEIGHT_FORMATS)
        self.weights_combo.setCurrentText("stored")
        self.weights_combo.setToolTip("Weight format: a float dtype or a GGUF quantisation mixture")
        self.kv_combo = ElidingComboBox(6)
        self.kv_combo.addItems(KV_TYPES)
        self.context_spin = QSpinBox()
        self.context_spin.setRange(1, 1 << 21)
        self.context_spin.setSingleStep(1024)
        self.context_spin.setValue(4096)
        self.context_spin.setSuffix(" tokens")
        self.gpu_spin = QDoubleSpinBox()
        self.gpu_spin.setRange(0.5, 2048)
        self.gpu_spin.setDecimals(1)
        self.gpu_spin.setValue(24.0)
        self.gpu_spin.setSuffix(" GiB")
        self.gpu_spin.setToolTip("GPU memory to fit the model in")
        for combo in (self.weights_combo, self.kv_combo):
            combo.currentIndexChanged.connect(self._recompute)
        for spin in (self.context_spin, self.gpu_spin):
            spin.valueChanged.connect(self._recompute)

        grid = QGridLayout(self)
        fields = (("Weights", self.weights_combo), ("KV cache", self.kv_combo), ("Context", self.context_spin),
                  ("GPU", self.gpu_spin))
        for row, (title, field) in enumerate(fields):
            field.setMinimumWidth(90)
            grid.addWidget(QLabel(title), row, 0)
            grid.addWidget(field, row, 1)
        self.figure_labels: dict[str, QLabel] = {}
        for row, (key, title) in enumerate(FIGURES):
            value = QLabel("—")
            value.setObjectName(f"moe_estimate_{key}")
            value.setWordWrap(True)
            grid.addWidget(QLabel(title), row, 2)
            grid.addWidget(value, row, 3)
            self.figure_labels[key] = value
        self.fit_label = QLabel()
        self.fit_label.setWordWrap(True)
        grid.addWidget(self.fit_label, len(FIGURES), 2, 1, 2)
        grid.setColumnStretch(3, 1)
        grid.setColumnMinimumWidth(2, 90)
        grid.setHorizontalSpacing(12)

    def options(self) -> EstimateOptions:
        """The options the controls describe."""
        return EstimateOptions(context=self.context_spin.value(), weights=self.weights_combo.currentText(),
                               kv_dtype=self.kv_combo.currentText(),
                               gpu_memory_bytes=gib_to_bytes(self.gpu_spin.value()))

    def show_moe(self, recipe: MoeRecipe, base: DonorInfo | None) -> None:
        """Estimate the MoE ``recipe`` builds from ``base`` (None: the base is not resolved)."""
        self._recipe, self._base = recipe, base
        self._recompute()

    def figure(self, key: str) -> str:
        """The text shown for figure ``key`` (``params``, ``weights``, ``kv``, ``total``)."""
        return self.figure_labels[key].text()

    def _recompute(self, *_: object) -> None:
        message = "the base model is not resolved"
        self.estimate = None
        if self._recipe is not None and self._base is not None:
            try:
                self.estimate = estimate_moe(self._recipe, self._base, self.options())
            except UserError as exc:
                message = str(exc)
        if self.estimate is None:
            for label in self.figure_labels.values():
                label.setText("—")
            self.fit_label.setText(f"No estimate: {message}")
            self.fit_label.setStyleSheet("")
            return
        assert self._recipe is not None
        self._show(self.estimate, self._recipe)

    def _show(self, moe: MoeEstimate, recipe: MoeRecipe) -> None:
        final, options = moe.estimate, moe.estimate.options
        labels = self.figure_labels
        labels["params"].setText(f"{format_count(moe.total_params)} total, {format_count(moe.active_params)} "
                                 f"active per token ({recipe.experts_per_token} of {len(recipe.experts)} experts)")
        labels["params"].setToolTip(f"{moe.total_params:,} total, {moe.active_params:,} active per token")
        labels["weights"].setText(f"{format_size(final.weights_bytes, 2)} ({final.weights_label})")
        labels["kv"].setText(f"{format_size(final.kv_cache_bytes, 2)} at {format_context(options.context)} tokens "
                             f"({final.kv.bytes_per_token / 1024:,.0f} KiB/token)")
        labels["total"].setText(f"<b>{format_size(final.total_bytes, 2)}</b> with compute buffer and overhead")
        budget = options.gpu_memory_bytes or 0
        fits = final.total_bytes <= budget
        gap = format_size(abs(budget - final.total_bytes), 2)
        self.fit_label.setText(f"Fits a {format_size(budget)} GPU, {gap} to spare" if fits else
                               f"Does not fit a {format_size(budget)} GPU: {gap} too much")
        self.fit_label.setStyleSheet(f"color: {FITS_COLOR if fits else TOO_BIG_COLOR}; font-weight: bold;")
