"""A merge method's settings that are not per-layer curves: switches, counts and thresholds.

One row per shared parameter of the current stage's method (top level), showing the value in
effect, the method's default when the recipe sets none; each change is one undo step.
"""

from __future__ import annotations

import math
from typing import TypeGuard

from PySide6.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLineEdit, QToolButton, QWidget

from merger_gui.core import parameter_edits as edits
from merger_gui.core.methods import ParameterSpec
from merger_gui.core.recipe import Scalar, Stage

from .document import RecipeDocument

VARIES = "varies per tensor (edit in the YAML tab)"


def _scalar(value: object) -> TypeGuard[bool | int | float]:
    return isinstance(value, (bool, int, float))


def _format(value: Scalar) -> str:
    return str(value) if isinstance(value, bool) else f"{value:g}"


def parse_setting(text: str, spec: ParameterSpec) -> Scalar | None:
    """The value ``text`` gives a numeric setting (an int for counts), or None when it is no number."""
    try:
        number = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if spec.kind == "int":
        return int(number) if number.is_integer() else None
    return number


class MethodSettings(QWidget):
    """Edits the settings ``specs`` of the document's current stage."""

    def __init__(self, document: RecipeDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.specs: tuple[ParameterSpec, ...] = ()
        self.editors: dict[str, QCheckBox | QLineEdit] = {}
        self.reset_buttons: dict[str, QToolButton] = {}
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)

    def set_specs(self, specs: tuple[ParameterSpec, ...]) -> None:
        """Show a row for each of ``specs`` (rebuilt only when they change), then the values."""
        if specs != self.specs:
            self.specs = specs
            while self.form.rowCount():
                self.form.removeRow(0)
            self.editors.clear()
            self.reset_buttons.clear()
            for spec in specs:
                self._add_row(spec)
        self.refresh()

    def _add_row(self, spec: ParameterSpec) -> None:
        editor: QCheckBox | QLineEdit
        if spec.kind == "bool":
            editor = QCheckBox()
            editor.clicked.connect(lambda checked, s=spec: self._set(s, bool(checked)))
        else:
            editor = QLineEdit()
            editor.setMaximumWidth(140)
            editor.editingFinished.connect(lambda s=spec: self._edited(s))
        reset = QToolButton()
        reset.setText("Use default")
        reset.setAutoRaise(True)
        reset.setToolTip(f"Remove {spec.name} from the recipe: the method's default {spec.default} applies")
        reset.clicked.connect(lambda _=False, s=spec: self._set(s, None))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(editor)
        row.addWidget(reset)
        row.addStretch(1)
        editor.setToolTip(f"{spec.name}: {spec.help} (default {spec.default})" if spec.help else spec.name)
        self.form.addRow(spec.name, row)
        self.editors[spec.name] = editor
        self.reset_buttons[spec.name] = reset

    def value(self, name: str) -> object:
        """The recipe's own value of setting ``name`` (None when the default applies)."""
        return edits.get_parameter(self.document.stage, edits.TOP_LEVEL, name)

    def refresh(self, *_: object) -> None:
        """Show the current stage's values."""
        for spec in self.specs:
            value, editor = self.value(spec.name), self.editors[spec.name]
            shown = spec.default if value is None else value
            editor.blockSignals(True)
            if isinstance(editor, QCheckBox):
                editor.setChecked(bool(shown) if _scalar(shown) else False)
                editor.setText("(default)" if value is None else "" if _scalar(value) else VARIES)
            else:  # the default is the placeholder: an empty field means "the method's default"
                editor.setPlaceholderText(f"{_format(spec.default)} (default)" if _scalar(spec.default) else "")
                editor.setText("" if value is None else _format(value) if _scalar(value) else VARIES)
            editor.setEnabled(value is None or _scalar(value))
            editor.blockSignals(False)
            self.reset_buttons[spec.name].setVisible(value is not None)

    def _edited(self, spec: ParameterSpec) -> None:
        editor = self.editors[spec.name]
        assert isinstance(editor, QLineEdit)
        text = editor.text().strip()
        value = parse_setting(text, spec) if text else None  # an empty field means the default
        if text and value is None:
            self.refresh()  # not a number: show the value in effect again
            return
        current = self.value(spec.name)
        if value == current or (current is None and value == spec.default):
            return
        self._set(spec, value)

    def _set(self, spec: ParameterSpec, value: Scalar | None) -> None:
        text = f"Set {spec.name} to {value}" if value is not None else f"Reset {spec.name} to its default"
        self.document.apply_to_stage(lambda s: _with_setting(s, spec.name, value), text)


def _with_setting(stage: Stage, name: str, value: Scalar | None) -> Stage:
    return edits.set_parameter(stage, edits.TOP_LEVEL, name, value)
