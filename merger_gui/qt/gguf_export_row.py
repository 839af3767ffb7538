"""The Merge tab's "Export GGUF" row: a model folder (the merge's output, or any) to one .gguf file.

The export runs :func:`merger_gui.engine.gguf_export.export_gguf` (imported lazily: it imports
gguf-py and torch) on a :class:`~.job_runner.JobRunner` thread, like checks and merges, with
progress and cancel. The predicted size is the estimator's exact figure for the chosen type.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QApplication, QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout,
    QWidget,
)

from merger_gui.core.errors import UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.quantization import GGUF_EXPORT_TYPES, gguf_export_bytes
from merger_gui.core.units import format_size
from merger_gui.engine.gguf_events import ExportCancelled, ExportDone, ExportProgress

from .job_runner import JobRunner


class GGUFExportRow(QWidget):
    """Model folder, type, predicted size, Export GGUF / Cancel, progress and the result's path."""

    exported = Signal(object)  # the .gguf Path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = JobRunner(self, what="export")
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.failed.connect(self._on_failed)
        self.runner.running_changed.connect(self._set_running)
        self.result_path: Path | None = None
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("model folder to export, e.g. the merge's output")
        self.folder_edit.editingFinished.connect(self.update_estimate)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.type_combo = QComboBox()
        self.type_combo.addItems(list(GGUF_EXPORT_TYPES))
        self.type_combo.setToolTip("Matrices in this type; norms and biases stay f32. For K-quants (Q4_K_M…) "
                                   "quantise the f16 file with llama.cpp's llama-quantize.")
        self.type_combo.currentTextChanged.connect(self.update_estimate)
        self.size_label = QLabel()
        self.export_button = QPushButton("Export GGUF")
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Two rows, so the Merge tab fits a dock of about 370 px (a 1024-px window) without scrolling sideways.
        folder_row, action_row = QHBoxLayout(), QHBoxLayout()
        rows: tuple[tuple[QHBoxLayout, QWidget, int], ...] = (
            (folder_row, QLabel("GGUF"), 0), (folder_row, self.folder_edit, 1), (folder_row, browse, 0),
            (action_row, self.type_combo, 0), (action_row, self.size_label, 1), (action_row, self.export_button, 0),
            (action_row, self.cancel_button, 0))
        for row, widget, stretch in rows:
            row.addWidget(widget, stretch)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(folder_row)
        layout.addLayout(action_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.result_label)
        self.progress_bar.hide()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.runner.shutdown)
        self._set_running(False)

    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    def set_model_folder(self, folder: object) -> None:
        """Offer ``folder`` (a merge's output) for export."""
        if folder is not None and not self.is_running:
            self.folder_edit.setText(str(folder))
            self.update_estimate()

    def output_file(self) -> Path:
        """``<folder>-<type>.gguf`` beside the model folder."""
        folder = Path(self.folder_edit.text().strip()).expanduser()
        return folder.parent / f"{folder.name}-{self.type_combo.currentText()}.gguf"

    def update_estimate(self, *_: object) -> None:
        """The exact tensor data of the chosen type, from the folder's headers (nothing read beyond them)."""
        text = self.folder_edit.text().strip()
        try:
            nbytes = gguf_export_bytes(inspect_folder(text), self.type_combo.currentText()) if text else None
        except UserError as exc:
            self.size_label.setText("")
            self.size_label.setToolTip(str(exc))
            nbytes = None
        if nbytes is not None:
            self.size_label.setText(f"≈ {format_size(nbytes)}")
            self.size_label.setToolTip("Tensor data of the GGUF file (exact; the header adds the vocabulary)")
        self._set_running(False)

    def start_export(self) -> bool:
        """Export the folder on a worker thread; False when nothing to export or one is running."""
        if self.is_running or not self.folder_edit.text().strip():
            return False
        model, out, export_type = (Path(self.folder_edit.text().strip()).expanduser(), self.output_file(),
                                    self.type_combo.currentText())

        def job(cancel: threading.Event) -> Iterator[object]:
            from merger_gui.engine.gguf_export import export_gguf

            return export_gguf(model, out, export_type, overwrite=True, cancel=cancel)

        self.result_label.setText(f"Exporting to {out}…")
        self.progress_bar.setValue(0)
        self.progress_bar.show()
        self.runner.start(job, (ExportCancelled,))
        return True

    def cancel(self) -> None:
        """Stop the running export between tensors; nothing is left behind."""
        self.runner.cancel()

    def _browse(self) -> None:
        start = self.folder_edit.text() or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Model folder to export", start)
        if folder:
            self.set_model_folder(folder)

    def _set_running(self, running: bool) -> None:
        self.export_button.setEnabled(not running and bool(self.folder_edit.text().strip()))
        self.cancel_button.setEnabled(running)
        self.folder_edit.setEnabled(not running)
        self.type_combo.setEnabled(not running)

    @Slot(object)
    def _on_progress(self, event: object) -> None:
        if isinstance(event, ExportProgress):
            self.progress_bar.setValue(int(1000 * event.bytes_written / max(1, event.total_bytes)))

    @Slot(object)
    def _on_finished(self, done: object) -> None:
        self.progress_bar.hide()
        if not isinstance(done, ExportDone):
            self._on_failed("the export ended without writing a file")
            return
        self.result_path = done.path
        self.result_label.setText(f"GGUF written: {done.path} ({format_size(done.file_bytes)})")
        self.exported.emit(done.path)

    @Slot()
    def _on_cancelled(self) -> None:
        self.progress_bar.hide()
        self.result_label.setText("Export cancelled; nothing was written")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.progress_bar.hide()
        self.result_label.setText(f"Export failed: {message}")
