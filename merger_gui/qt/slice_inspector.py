"""The selected slice in numbers: each source's donor and layer range, edited exactly (one undo step each)."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSizePolicy, QSpinBox, QToolButton, QWidget

from merger_gui.core import slice_edits
from merger_gui.core.donor import MAX_LAYERS
from merger_gui.core.recipe import Slice

from .document import RecipeDocument
from .flow_layout import FlowLayout
from .stack_view import StackView

NUDGE_HELP = ("Keys on the stacks: Up/Down take the layers one earlier or later, Ctrl+Up/Down move the start, "
              "Shift+Up/Down the end, Alt+Up/Down reorder the slice")


class SourceEditor(QWidget):
    """One source of the selected slice: donor, start and end of its ``layer_range`` [start, end)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(10)
        self.model_combo.setToolTip("The donor this source takes its layers from")
        self.start_spin, self.end_spin = QSpinBox(), QSpinBox()
        for spin, what in ((self.start_spin, "first layer taken"), (self.end_spin, "layer after the last one taken")):
            spin.setKeyboardTracking(False)  # typing "40" is one edit, not "4" then "40"
            spin.setToolTip(f"layer_range [start, end): {what}\n{NUDGE_HELP}")
        self.count_label = QLabel()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.model_combo)
        layout.addWidget(QLabel("["))
        layout.addWidget(self.start_spin)
        layout.addWidget(QLabel(","))
        layout.addWidget(self.end_spin)
        layout.addWidget(QLabel(")"))
        layout.addWidget(self.count_label)

    def show_source(self, models: list[str], model: str, layer_range: tuple[int, int], limit: int | None) -> None:
        """Show the values without emitting edits."""
        for widget in (self.model_combo, self.start_spin, self.end_spin):
            widget.blockSignals(True)
        if [self.model_combo.itemText(i) for i in range(self.model_combo.count())] != models:
            self.model_combo.clear()
            self.model_combo.addItems(models)
        self.model_combo.setCurrentText(model)
        upper = limit if limit is not None else MAX_LAYERS
        self.start_spin.setRange(0, max(0, upper - 1))
        self.end_spin.setRange(1, max(1, upper))
        self.start_spin.setValue(layer_range[0])
        self.end_spin.setValue(layer_range[1])
        count = layer_range[1] - layer_range[0]
        self.count_label.setText(f"{count} layer{'s' if count != 1 else ''}")
        for widget in (self.model_combo, self.start_spin, self.end_spin):
            widget.blockSignals(False)


class SliceInspector(QWidget):
    """A row under the stacks: the selected slice's sources, and the stacks' zoom buttons."""

    def __init__(self, document: RecipeDocument, view: StackView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.view = document, view
        self.title = QLabel()
        self.sources: list[SourceEditor] = []
        self._layout = FlowLayout(self, spacing=10)
        self._layout.setContentsMargins(8, 4, 8, 4)
        self._layout.addWidget(self.title)
        zoom = QWidget()
        zoom_layout = QHBoxLayout(zoom)
        zoom_layout.setContentsMargins(0, 0, 0, 0)
        zoom_layout.setSpacing(2)
        for action, text in zip(view.zoom_actions, ("+", "−", "Fit")):
            button = QToolButton()
            button.setDefaultAction(action)
            button.setText(text)
            button.setAutoRaise(True)
            zoom_layout.addWidget(button)
        self._zoom = zoom
        self._layout.addWidget(zoom)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        document.selection_changed.connect(self.refresh)
        document.recipe_changed.connect(self.refresh)
        document.current_stage_changed.connect(self.refresh)
        self.refresh()

    def _selected(self) -> tuple[int, Slice] | None:
        selection = self.document.selection
        slices = self.document.stage.slices or ()
        if selection is None or selection[0] != self.document.current_stage or selection[1] >= len(slices):
            return None
        return selection[1], slices[selection[1]]

    def refresh(self, *_: object) -> None:
        selected = self._selected()
        if selected is None:
            self.title.setText("No slice selected: click one, or drag over a donor's layers")
            self._set_source_count(0)
            return
        index, slice_ = selected
        self.title.setText(f"Slice {index + 1}")
        self.title.setToolTip(NUDGE_HELP)
        self._set_source_count(len(slice_.sources))
        models = list(dict.fromkeys([*self.view.columns, *(s.model for s in slice_.sources)]))
        for editor, source in zip(self.sources, slice_.sources):
            editor.show_source(models, source.model, source.layer_range, self.view.num_layers(source.model))

    def _set_source_count(self, count: int) -> None:
        while len(self.sources) > count:
            editor = self.sources.pop()
            self._layout.removeWidget(editor)
            editor.deleteLater()
        while len(self.sources) < count:
            editor = SourceEditor(self)
            k = len(self.sources)
            editor.start_spin.valueChanged.connect(lambda v, k=k: self._set_end(k, "start", v))
            editor.end_spin.valueChanged.connect(lambda v, k=k: self._set_end(k, "end", v))
            editor.model_combo.textActivated.connect(lambda model, k=k: self._set_model(k, model))
            self.sources.append(editor)
            self._layout.removeWidget(self._zoom)  # the zoom buttons stay last
            self._layout.addWidget(editor)
            self._layout.addWidget(self._zoom)
            editor.show()

    def _set_end(self, source: int, end: str, value: int) -> None:
        selected = self._selected()
        if selected is None:
            return
        index, slice_ = selected
        limit = self.view.num_layers(slice_.sources[source].model)
        values = {"start": value} if end == "start" else {"end": value}
        self.document.apply_to_stage(
            lambda s: slice_edits.resize_slice(s, index, **values, source=source, num_layers=limit),
            f"Set the {end} of slice {index + 1} to {value}")

    def _set_model(self, source: int, model: str) -> None:
        selected = self._selected()
        if selected is None or not model:
            return
        index = selected[0]
        limit = self.view.num_layers(model)
        self.document.apply_to_stage(
            lambda s: slice_edits.set_slice_model(s, index, model, source=source, num_layers=limit),
            f"Take slice {index + 1} from {model}")
