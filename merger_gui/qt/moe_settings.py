"""The recipe-wide settings of an MoE: base model, gate mode, experts per token, dtype, architecture."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QSpinBox, QWidget

from merger_gui.core.moe_edits import (
    ARCHITECTURES, DTYPES, set_architecture, set_base_model, set_dtype, set_experts_per_token, set_gate_mode,
)
from merger_gui.core.moe_recipe import GATE_MODES, MoeRecipe

from .eliding_combo import ElidingComboBox

GATE_HELP = {
    "hidden": "the base model reads each expert's prompts; its hidden states (last token) set the router",
    "cheap_embed": "the prompts' mean token embedding sets the router: no forward pass, the same for every layer",
    "random": "random routers (fine-tune them afterwards); prompts are not read",
    "uniform_random": "uniform random routers scaled like a fresh layer; prompts are not read",
    "hidden_avg": "like hidden, the hidden states averaged over each prompt's tokens",
    "hidden_last": "like hidden (the last token's hidden state)",
}
AUTO = "auto"


class MoeSettingsBar(QWidget):
    """Edits the recipe's own values; ``edit_requested(edit, text)`` for each change (one undo step)."""

    edit_requested = Signal(object, str)  # a pure edit of the MoeRecipe, its undo text

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.base_combo = ElidingComboBox(24)
        self.base_combo.setPlaceholderText("choose a base model")
        self.base_combo.setToolTip("Attention, norms and embeddings come from the base; with gate_mode hidden "
                                   "it also reads the prompts")
        self.gate_combo = QComboBox()
        for mode in GATE_MODES:
            self.gate_combo.addItem(mode)
            self.gate_combo.setItemData(self.gate_combo.count() - 1, GATE_HELP[mode], Qt.ItemDataRole.ToolTipRole)
        self.per_token_spin = QSpinBox()
        self.per_token_spin.setRange(1, 64)
        self.per_token_spin.setKeyboardTracking(False)  # typing "12" is one edit, not two
        self.per_token_spin.setToolTip("Experts each token is routed to (experts_per_token): the active parameters")
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItems([AUTO, *DTYPES])
        self.dtype_combo.setToolTip("The output's dtype; auto: the base model's")
        self.architecture_combo = QComboBox()
        self.architecture_combo.addItems([AUTO, *ARCHITECTURES])
        self.architecture_combo.setToolTip("mergekit-moe's output architecture; auto: Mixtral without shared "
                                           "experts, Qwen MoE with one")
        self.gate_help = QLabel()
        self.gate_help.setWordWrap(True)
        self.gate_help.setStyleSheet("color: gray")

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.addWidget(QLabel("Base model"), 0, 0)
        grid.addWidget(self.base_combo, 0, 1, 1, 7)
        fields = (("Gate mode", self.gate_combo), ("Experts per token", self.per_token_spin),
                  ("dtype", self.dtype_combo), ("Architecture", self.architecture_combo))
        for index, (title, field) in enumerate(fields):
            grid.addWidget(QLabel(title), 1, 2 * index, Qt.AlignmentFlag.AlignRight if index else
                           Qt.AlignmentFlag.AlignLeft)
            grid.addWidget(field, 1, 2 * index + 1)
        grid.addWidget(self.gate_help, 2, 1, 1, 7)
        grid.setColumnStretch(8, 1)  # the fields keep their size; the base combo as wide as their row

        self.base_combo.activated.connect(self._base_picked)
        self.gate_combo.activated.connect(self._gate_picked)
        self.per_token_spin.valueChanged.connect(self._per_token_changed)
        self.dtype_combo.activated.connect(self._dtype_picked)
        self.architecture_combo.activated.connect(self._architecture_picked)

    def show_recipe(self, recipe: MoeRecipe, names: Sequence[str]) -> None:
        """Show ``recipe``'s values, the base combo offering ``names``; no edit is emitted."""
        widgets = (self.base_combo, self.gate_combo, self.per_token_spin, self.dtype_combo, self.architecture_combo)
        for widget in widgets:
            widget.blockSignals(True)
        self.base_combo.clear()
        self.base_combo.addItems(list(dict.fromkeys([recipe.base_model, *names] if recipe.base_model else names)))
        self.base_combo.setCurrentIndex(self.base_combo.findText(recipe.base_model))  # -1: the placeholder
        self.gate_combo.setCurrentText(recipe.gate_mode)
        self.per_token_spin.setValue(recipe.experts_per_token)
        _show_choice(self.dtype_combo, recipe.dtype)
        _show_choice(self.architecture_combo, recipe.architecture)
        for widget in widgets:
            widget.blockSignals(False)
        self.gate_help.setText(f"{recipe.gate_mode}: {GATE_HELP[recipe.gate_mode]}")

    def _base_picked(self, _row: int) -> None:
        name = self.base_combo.currentText()
        self.edit_requested.emit(lambda r: set_base_model(r, name), f"Base model {name}")

    def _gate_picked(self, _row: int) -> None:
        mode = self.gate_combo.currentText()
        self.edit_requested.emit(lambda r: set_gate_mode(r, mode), f"Gate mode {mode}")

    def _per_token_changed(self, count: int) -> None:
        self.edit_requested.emit(lambda r: set_experts_per_token(r, count), f"{count} experts per token")

    def _dtype_picked(self, _row: int) -> None:
        dtype = _choice(self.dtype_combo)
        self.edit_requested.emit(lambda r: set_dtype(r, dtype), f"dtype {dtype or AUTO}")

    def _architecture_picked(self, _row: int) -> None:
        architecture = _choice(self.architecture_combo)
        self.edit_requested.emit(lambda r: set_architecture(r, architecture), f"Architecture {architecture or AUTO}")


def _choice(combo: QComboBox) -> str | None:
    return None if combo.currentText() == AUTO else combo.currentText()


def _show_choice(combo: QComboBox, value: str | None) -> None:
    """Select ``value`` (None: auto), adding it when the file names one the list lacks."""
    text = value or AUTO
    if combo.findText(text) < 0:
        combo.addItem(text)
    combo.setCurrentText(text)
