"""Asks for a model and the PEFT LoRA adapter to apply to it: the recipe's ``MODEL+LORA`` reference."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout,
    QWidget,
)

from merger_gui.core.errors import DonorError
from merger_gui.core.lora_config import check_adapter_reference

ERROR_STYLE = "color: #c0392b;"


class LoraDonorDialog(QDialog):
    """A model (folder or Hub repo id) and an adapter (folder or Hub repo id); :attr:`model_edit` is
    read-only when the model is given. An adapter that cannot be one is refused inline, in one line.

    Args:
        model: The model to attach the adapter to (None: the user picks it).
        adapter: The adapter proposed.
        start_folder: Where the folder pickers open.
    """

    def __init__(self, model: str | None = None, adapter: str = "", start_folder: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Donor with a LoRA adapter")
        self.start_folder = start_folder
        self.model_edit = QLineEdit(model or "")
        self.model_edit.setReadOnly(model is not None)
        self.model_edit.setPlaceholderText("a model folder, or org/name[@revision] on the Hub")
        self.adapter_edit = QLineEdit(adapter)
        self.adapter_edit.setPlaceholderText("a PEFT adapter folder, or org/name[@revision] on the Hub")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()
        note = QLabel("mergekit's MODEL+LORA: the adapter (adapter_config.json and adapter_model.safetensors) "
                      "is applied to the model's weights as they are read; the recipe names the donor "
                      "MODEL+ADAPTER.")
        note.setWordWrap(True)
        note.setEnabled(False)  # drawn in the muted text colour

        form = QFormLayout()
        form.addRow("Model", self._with_browse(self.model_edit, "Model folder", model is None))
        form.addRow("LoRA adapter", self._with_browse(self.adapter_edit, "LoRA adapter folder", True))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self.resize(560, self.sizeHint().height())

    def _with_browse(self, edit: QLineEdit, caption: str, browsable: bool) -> QWidget:
        row = QWidget(self)
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(edit, 1)
        if browsable:
            button = QPushButton("Folder…", row)
            button.clicked.connect(lambda: self._browse(edit, caption))
            layout.addWidget(button)
        return row

    def _browse(self, edit: QLineEdit, caption: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, caption, edit.text() or self.start_folder)
        if folder:
            edit.setText(folder)

    def model(self) -> str:
        return self.model_edit.text().strip()

    def adapter(self) -> str:
        return self.adapter_edit.text().strip()

    def problem(self) -> str | None:
        """Why the answer cannot be used (one line), or None."""
        if not self.model():
            return "choose the model the adapter applies to"
        if "+" in self.model():
            return "the model must be a plain folder or repo id (MODEL+LORA takes one adapter)"
        if not self.adapter():
            return "choose the LoRA adapter: a folder or a Hub repo id"
        try:
            check_adapter_reference(self.adapter())
        except DonorError as exc:
            return str(exc)
        return None

    def accept(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.error_label.setText(problem)
            self.error_label.show()
            return
        super().accept()
