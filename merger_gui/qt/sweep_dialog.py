""""Sweep t from 0.3 to 0.7 in 5 steps": the parameter, the range, the folder and whether to keep variants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
    QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)


@dataclass(frozen=True)
class SweepRequest:
    param: str
    start: float
    stop: float
    steps: int
    out_dir: Path
    keep: bool


class SweepDialog(QDialog):
    """Asks what to sweep; :meth:`request` is the answer once accepted.

    Args:
        paths: The sweepable parameter paths of the final stage (``t``, ``t.self_attn``…).
        out_dir: The folder proposed for the sweep.
    """

    def __init__(self, paths: Sequence[str], out_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sweep a parameter")
        self.param_combo = QComboBox()
        self.param_combo.setEditable(True)
        self.param_combo.addItems(list(paths))
        self.param_combo.setToolTip("As the YAML names it at the top of the final stage: t is the whole "
                                    "parameter, t.self_attn its rule with filter self_attn")
        self.start_spin = self._value_spin(0.3)
        self.stop_spin = self._value_spin(0.7)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 50)
        self.steps_spin.setValue(5)
        self.folder_edit = QLineEdit(str(out_dir))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        self.keep_check = QCheckBox("Keep every variant's model (otherwise each is deleted once evaluated)")
        self.values_label = QLabel()
        self.values_label.setWordWrap(True)
        self.values_label.setStyleSheet("color: palette(mid);")
        for spin in (self.start_spin, self.stop_spin, self.steps_spin):
            spin.valueChanged.connect(self._show_values)

        form = QFormLayout()
        form.addRow("Parameter", self.param_combo)
        form.addRow("From", self.start_spin)
        form.addRow("To", self.stop_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Folder", folder_row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Sweep")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.values_label)
        layout.addWidget(self.keep_check)
        layout.addWidget(QLabel("A sweep stopped part-way resumes when started again with the same folder."))
        layout.addWidget(buttons)
        self._show_values()

    @staticmethod
    def _value_spin(value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setDecimals(3)
        spin.setRange(-1000.0, 1000.0)
        spin.setSingleStep(0.05)
        spin.setValue(value)
        return spin

    def values(self) -> tuple[float, ...]:
        from merger_gui.engine.sweep import stepped_values

        return stepped_values(self.start_spin.value(), self.stop_spin.value(), self.steps_spin.value())

    def _show_values(self, *_: object) -> None:
        self.values_label.setText("Values: " + ", ".join(f"{v:g}" for v in self.values()))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Sweep into…", str(Path(self.folder_edit.text()).parent))
        if folder:
            self.folder_edit.setText(folder)

    def request(self) -> SweepRequest:
        return SweepRequest(self.param_combo.currentText().strip(), self.start_spin.value(), self.stop_spin.value(),
                            self.steps_spin.value(), Path(self.folder_edit.text().strip()).expanduser(),
                            self.keep_check.isChecked())
