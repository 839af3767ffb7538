"""The stage settings bar: merge method, base model, dtypes, tokenizer source and stage name.

Each change is one undo step through :mod:`merger_gui.core.stage_edits`; the bar follows the
document with its signals blocked, so showing a change never echoes back as an edit.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QSizePolicy, QWidget

from merger_gui.core import stage_edits
from merger_gui.core.dtypes import PICKABLE_NAMES
from merger_gui.core.methods import METHODS, MethodSpec
from merger_gui.core.recipe import Stage

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .eliding_combo import ElidingComboBox
from .flow_layout import FlowLayout
from .live_plan import LivePlan

NONE = "(none)"
DEFAULT = "(default)"
COMBO_CHARS = 11  # long donor names elide instead of widening the bar
METHOD_CHARS = 14  # the longest method labels elide too; the open list shows them whole


def _field(label: str, widget: QWidget, tooltip: str) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    caption = QLabel(label)
    caption.setBuddy(widget)
    layout.addWidget(caption)
    layout.addWidget(widget)
    box.setToolTip(tooltip)
    return box


def _method_group(spec: MethodSpec) -> int:
    """The method's place in the list: stacking, two models, blends of any number, deltas to a base."""
    if spec.max_models == 1:
        return 0
    if spec.max_models == 2:
        return 1
    return 3 if spec.needs_base else 2


def _method_combo() -> QComboBox:
    """Every method by its short label, grouped by what it merges (separators between groups)."""
    combo = QComboBox()
    previous = None
    for spec in sorted(METHODS.values(), key=_method_group):
        if previous is not None and _method_group(spec) != previous:
            combo.insertSeparator(combo.count())
        previous = _method_group(spec)
        combo.addItem(spec.label.split(" (")[0], spec.name)  # the full label is the item's tooltip
        combo.setItemData(combo.count() - 1, f"{spec.label} — {spec.name}", Qt.ItemDataRole.ToolTipRole)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(METHOD_CHARS)
    combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)
    return combo


def _set_items(combo: QComboBox, items: list[tuple[str, str | None]], current: str | None) -> None:
    """Fill ``combo`` with (text, value) items and select ``current`` (added when missing)."""
    if current is not None and current not in [value for _, value in items]:
        items = [*items, (current, current)]
    combo.clear()
    for text, value in items:
        combo.addItem(text, value)
        combo.setItemData(combo.count() - 1, value or text, Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentIndex(max(0, combo.findData(current)) if current is not None else 0)


class StageSettingsBar(QWidget):
    """Settings of the current stage, in one compact row that wraps when the centre is narrow."""

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, live_plan: LivePlan,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.registry, self.live_plan = document, registry, live_plan
        self.method_combo = _method_combo()
        self.base_combo = self._model_combo()
        self.dtype_combo = QComboBox()
        self.out_dtype_combo = QComboBox()
        self.tokenizer_combo = self._model_combo()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("stage name")
        self.name_edit.setMaximumWidth(130)
        self.name_field = _field("Name", self.name_edit, "name of this stage; later stages use it as a donor")
        layout = FlowLayout(self, spacing=10)
        layout.setContentsMargins(8, 5, 8, 5)
        layout.addWidget(self.name_field)
        layout.addWidget(_field("Method", self.method_combo, "merge_method of this stage"))
        layout.addWidget(_field("Base", self.base_combo, "base_model: the model others are merged onto"))
        layout.addWidget(_field("dtype", self.dtype_combo, "dtype the merge computes in"))
        layout.addWidget(_field("out", self.out_dtype_combo, "out_dtype the merged model is written in"))
        layout.addWidget(_field("Tokenizer", self.tokenizer_combo, "tokenizer_source: base, union or a donor"))
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.method_combo.activated.connect(self._method_chosen)
        self.base_combo.activated.connect(
            lambda: self._edit(stage_edits.set_base_model, self.base_combo, "Set base model"))
        self.dtype_combo.activated.connect(lambda: self._edit(stage_edits.set_dtype, self.dtype_combo, "Set dtype"))
        self.out_dtype_combo.activated.connect(
            lambda: self._edit(stage_edits.set_out_dtype, self.out_dtype_combo, "Set out_dtype"))
        self.tokenizer_combo.activated.connect(
            lambda: self._edit(stage_edits.set_tokenizer_source, self.tokenizer_combo, "Set tokenizer source"))
        self.name_edit.editingFinished.connect(self._name_edited)
        document.recipe_changed.connect(self.refresh)
        document.current_stage_changed.connect(self.refresh)
        registry.changed.connect(self.refresh)
        self.refresh()

    @staticmethod
    def _model_combo() -> QComboBox:
        combo = ElidingComboBox(COMBO_CHARS)  # a long model name elides instead of being cut off
        combo.view().setMinimumWidth(220)  # the open list shows names whole
        return combo

    def donors(self) -> tuple[str, ...]:
        """Donors the current stage may use, its own models first."""
        return stage_edits.stage_donors(self.document.recipe, self.document.current_stage, tuple(self.registry.refs))

    def _num_layers(self) -> dict[str, int]:
        layers = {name: info.num_layers for name, info in self.live_plan.known_donors.items()}
        layers.update({name: info.num_layers for name in self.registry.refs
                       if (info := self.registry.donor(name)) is not None})
        return layers

    def refresh(self, *_: object) -> None:
        stage, donors = self.document.stage, list(self.donors())
        widgets = (self.method_combo, self.base_combo, self.dtype_combo, self.out_dtype_combo, self.tokenizer_combo,
                   self.name_edit)
        for widget in widgets:
            widget.blockSignals(True)
        method = self.method_combo.findData(stage.merge_method)
        if method < 0:  # a method we do not know: shown, not offered
            self.method_combo.addItem(stage.merge_method, stage.merge_method)
            method = self.method_combo.count() - 1
        self.method_combo.setCurrentIndex(method)
        _set_items(self.base_combo, [(NONE, None), *((d, d) for d in donors)], stage.base_model)
        dtypes = [(DEFAULT, None), *((d, d) for d in PICKABLE_NAMES)]
        _set_items(self.dtype_combo, dtypes, stage.dtype)
        _set_items(self.out_dtype_combo, dtypes, stage.out_dtype)
        tokenizer = stage.tokenizer.source if stage.tokenizer is not None else stage.tokenizer_source
        _set_items(self.tokenizer_combo,
                   [(NONE, None), *((s, s) for s in stage_edits.TOKENIZER_SOURCES), *((d, d) for d in donors)],
                   tokenizer)
        if not self.name_edit.hasFocus():
            self.name_edit.setText(stage.name or "")
        self.name_field.setVisible(self.document.recipe.is_multi_stage or bool(stage.name))
        for widget in widgets:
            widget.blockSignals(False)

    def _edit(self, edit: Callable[[Stage, str | None], Stage], combo: QComboBox, text: str) -> None:
        value = combo.currentData()
        self.document.apply_to_stage(lambda s: edit(s, value), f"{text} to {value or 'default'}")

    def _method_chosen(self) -> None:
        method = self.method_combo.currentData()
        if method not in METHODS or method == self.document.stage.merge_method:
            return
        donors, layers = self.donors(), self._num_layers()
        self.document.apply_to_stage(lambda s: stage_edits.set_merge_method(s, method, donors, layers),
                                     f"Merge method {method}")

    def _name_edited(self) -> None:
        index, name = self.document.current_stage, self.name_edit.text()
        self.document.apply(lambda r: stage_edits.rename_stage(r, index, name), f"Rename stage to {name.strip()}")
        self.name_edit.setText(self.document.stage.name or "")  # a refused name shows the stage's again
