"""One-click merge: output folder, Merge / Cancel, progress, time left and a log."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QCloseEvent, QDesktopServices
from PySide6.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox, QPlainTextEdit, QProgressBar,
    QPushButton, QVBoxLayout, QWidget,
)

from merger_gui.core.donor import DonorInfo
from merger_gui.core.output_folders import replace_refusal
from merger_gui.core.readiness import merge_readiness
from merger_gui.core.recipe import Recipe
from merger_gui.core.units import format_duration, format_size
from merger_gui.engine.events import (
    DownloadProgress, MergeDone, MergeEvent, MergeWarning, StageFinished, StageStarted, TensorProgress,
)

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .gguf_export_row import GGUFExportRow
from .live_plan import LivePlan
from .merge_runner import MergeRunner
from .user_folders import user_folder

ERROR_STYLE = "color: #c0392b;"
OK_STYLE = "color: #2e7d32;"
NOTE_STYLE = "color: #b45309;"


class StatusLabel(QLabel):
    """A label shown only while it has text, so an empty one leaves no gap in the panel."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hide()

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setVisible(bool(text))

    def clear(self) -> None:
        self.setText("")


def default_output_name(document: RecipeDocument) -> str:
    """A folder name for the output: the final stage's name, the file name, or ``merged-model``."""
    stage = document.recipe.stages[-1] if document.recipe.stages else None
    name = (stage.name if stage else None) or (document.path.stem if document.path else "merged-model")
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "merged-model"


class MergePanel(QWidget):
    """Merges the open recipe into a folder, on a worker thread, with progress and cancel.

    Args:
        document: The open recipe.
        live_plan: Its plan and validation findings (``findings_changed``, ``plan_changed``).
        registry: Donors by recipe model name; profiles cannot be merged.
    """

    merge_finished = Signal(object)  # the output Path

    def __init__(self, document: RecipeDocument, live_plan: LivePlan, registry: DonorRegistry,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.live_plan = live_plan
        self.registry = registry
        self.runner = MergeRunner(self)
        self.output_path: Path | None = None
        self._suggested = ""  # the folder last proposed; replaced while the user keeps it
        self._replacing = False

        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder to create, e.g. ~/models/my-merge")
        self.folder_edit.textChanged.connect(self.update_state)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["cpu", "cuda"])
        self.device_combo.setToolTip("Where the tensor math runs (cuda needs a GPU build of torch)")
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Output folder", folder_row)
        form.addRow("Device", self.device_combo)

        self.merge_button = QPushButton("Merge")
        self.merge_button.setDefault(True)
        self.merge_button.clicked.connect(self.start_merge)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_merge)
        self.open_button = QPushButton("Open folder")
        self.open_button.clicked.connect(self.open_output)
        buttons = QHBoxLayout()
        buttons.addWidget(self.merge_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)

        self.blocker_label = QLabel()
        self.blocker_label.setWordWrap(True)
        self.blocker_label.setStyleSheet(ERROR_STYLE)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.stage_label = StatusLabel()
        self.tensor_label = StatusLabel()
        self.tensor_label.setStyleSheet("color: palette(mid);")
        self.eta_label = StatusLabel()
        self.running_note = QLabel("The running merge uses the recipe as it was when it started; "
                                   "your edits since then apply to the next merge.")
        self.running_note.setWordWrap(True)
        self.running_note.setStyleSheet(NOTE_STYLE)
        self.running_note.hide()
        self._started_recipe: Recipe | None = None  # what the running merge merges
        self.result_label = StatusLabel()
        self.result_label.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setPlaceholderText("Warnings and progress of the merge appear here.")

        status = QHBoxLayout()
        status.addWidget(self.stage_label, 1)
        status.addWidget(self.eta_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.blocker_label)
        layout.addLayout(buttons)
        layout.addWidget(self.running_note)
        layout.addWidget(self.progress_bar)
        layout.addLayout(status)
        layout.addWidget(self.tensor_label)
        layout.addWidget(self.result_label)
        self.gguf_row = GGUFExportRow(self)  # export the result (or any folder) to GGUF
        self.merge_finished.connect(self.gguf_row.set_model_folder)
        layout.addWidget(self.gguf_row)
        layout.addWidget(self.log, 1)

        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        # Bound methods, not lambdas: Qt drops the connections when this widget is deleted.
        self.runner.running_changed.connect(self.update_state)
        document.recipe_changed.connect(self.update_state)
        document.path_changed.connect(self._suggest_folder)
        registry.changed.connect(self.update_state)
        registry.changed.connect(self._suggest_folder)
        live_plan.plan_changed.connect(self.update_state)
        live_plan.findings_changed.connect(self.update_state)
        self._suggest_folder()
        self.open_button.hide()
        self.update_state()

    # --- state -------------------------------------------------------------------------------

    def blockers(self) -> list[str]:
        """Why the recipe cannot be merged now (empty when it can), from the live plan's findings."""
        return merge_readiness(self.document.recipe, self.registry.donors, self.registry.errors,
                               findings=self.live_plan.findings, partial=self.live_plan.partial)

    def update_state(self, *_: object) -> None:
        running = self.runner.is_running
        reasons = [] if running else self.blockers()
        if not running and not self.folder_edit.text().strip():
            reasons.append("choose an output folder")
        shown = reasons[:4] + ([f"… and {len(reasons) - 4} more"] if len(reasons) > 4 else [])
        self.blocker_label.setText("Cannot merge yet:\n• " + "\n• ".join(shown) if reasons else "")
        self.blocker_label.setVisible(bool(reasons))
        self.merge_button.setEnabled(not running and not reasons)
        self.running_note.setVisible(running and self.document.recipe != self._started_recipe)
        self.cancel_button.setEnabled(running)
        self.folder_edit.setEnabled(not running)
        self.device_combo.setEnabled(not running)

    def _suggest_folder(self, *_: object) -> None:
        """Propose a folder beside the recipe (or its first local donor), unless the user chose one."""
        if self.folder_edit.text().strip() not in ("", self._suggested) or self.runner.is_running:
            return
        self._suggested = str(self._suggested_parent() / default_output_name(self.document))
        self.folder_edit.setText(self._suggested)

    def _suggested_parent(self) -> Path:
        local = [Path(d.path).parent for d in self.registry.donors.values() if d.kind == "folder" and d.path]
        return user_folder(self.document.path.parent if self.document.path else None, *local)

    def _browse(self) -> None:
        start = str(Path(self.folder_edit.text()).expanduser().parent) if self.folder_edit.text() else str(Path.home())
        parent = QFileDialog.getExistingDirectory(self, "Create the merged model in…", start)
        if parent:
            self.folder_edit.setText(str(Path(parent) / default_output_name(self.document)))

    # --- running -----------------------------------------------------------------------------

    def confirm_overwrite(self, path: Path, donors: Mapping[str, DonorInfo]) -> bool:
        """Ask before replacing an existing folder (replaced only once the new one is complete);
        a folder that is not a merge's output, or holds the recipe, a donor or home, is refused."""
        donor_folders = [(name, Path(d.path)) for name, d in donors.items() if d.path]
        refusal = replace_refusal(path, self.document.path, donor_folders)
        if refusal:
            QMessageBox.warning(self, "Folder not replaced", f"{refusal}.")
            return False
        buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        answer = QMessageBox.question(
            self, "Replace folder?",
            f"{path} already exists.\nReplace it with the merged model once the merge completes?",
            buttons, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def output_folder(self) -> Path:
        """The chosen folder; a relative one is taken from the recipe file's folder (else home)."""
        path = Path(self.folder_edit.text().strip()).expanduser()
        if path.is_absolute():
            return path
        return (self.document.path.parent if self.document.path else Path.home()) / path

    def start_merge(self) -> bool:
        """Start merging into the chosen folder; False when blocked or declined."""
        if self.runner.is_running or self.blockers() or not self.folder_edit.text().strip():
            return False
        path = self.output_folder()
        self.folder_edit.setText(str(path))
        donors: dict[str, DonorInfo] = dict(self.registry.donors)
        overwrite = path.exists() or path.is_symlink()
        if overwrite and not self.confirm_overwrite(path, donors):
            return False
        self.output_path = path
        self._started_recipe = self.document.recipe
        self._replacing = overwrite
        self.log.clear()
        self.result_label.clear()
        self.open_button.hide()
        self.progress_bar.setValue(0)
        self.stage_label.setText("Checking donors and disk space…")
        self.tensor_label.clear()
        self.eta_label.clear()
        self.runner.start_merge(self.document.recipe, donors, path, overwrite=overwrite,
                                device=self.device_combo.currentText(), recipe_path=self.document.path)
        return True

    def reset(self) -> None:
        """Forget the last merge's result and log (a new recipe); a running merge is left alone."""
        if self.runner.is_running:
            return
        self.output_path = None
        for label in (self.stage_label, self.tensor_label, self.eta_label, self.result_label):
            label.clear()
        self.log.clear()
        self.progress_bar.setValue(0)
        self.open_button.hide()
        self._suggest_folder()

    def cancel_merge(self) -> None:
        if self.runner.is_running:
            self.stage_label.setText("Cancelling…")
            self.runner.cancel()

    def open_output(self) -> None:
        if self.output_path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.output_path)))

    def _on_progress(self, event: MergeEvent) -> None:
        if isinstance(event, StageStarted):
            title = f"Stage {event.index + 1} of {event.count}: {event.name}" if event.count > 1 else "Merging"
            self.stage_label.setText(title + (" (reused)" if event.reused else ""))
            self.log.appendPlainText(f"{_stage_prefix(event) or 'merging '}{event.tensors} tensors"
                                     f"{' (reused from an earlier run)' if event.reused else ''}")
        elif isinstance(event, TensorProgress):
            self.progress_bar.setValue(int(1000 * event.overall_index / max(1, event.overall_count)))
            self.tensor_label.setText(f"{event.name}  ({event.index}/{event.count})")
            if event.eta is not None:
                self.eta_label.setText(f"{format_duration(event.eta)} left")
        elif isinstance(event, DownloadProgress):
            self.tensor_label.setText(f"downloading {event.model}: {event.file} "
                                      f"{event.downloaded / 2**20:,.0f}/{event.total / 2**20:,.0f} MiB")
        elif isinstance(event, MergeWarning):
            self.log.appendPlainText(f"warning: {event.message}")
        elif isinstance(event, StageFinished):
            self.log.appendPlainText(f"{_stage_prefix(event)}written to {event.path} "
                                     f"in {format_duration(event.seconds)}")

    def _on_finished(self, done: MergeDone | None) -> None:
        self.progress_bar.setValue(1000)
        self.stage_label.setText("Done")
        self.tensor_label.clear()
        self.eta_label.clear()
        if done is not None:
            self.output_path = Path(done.path)
            self.log.appendPlainText(f"merged {done.tensors} tensors ({format_size(done.bytes_written)}) "
                                     f"in {format_duration(done.seconds)}")
        self.result_label.setStyleSheet(OK_STYLE)
        self.result_label.setText(f"The merged model is in {self.output_path}")
        self.open_button.show()
        self.merge_finished.emit(self.output_path)

    def _on_failed(self, message: str) -> None:
        self.stage_label.setText("Failed")
        self.eta_label.clear()
        self.result_label.setStyleSheet(ERROR_STYLE)
        self.result_label.setText(f"The merge failed: {message}")
        self.log.appendPlainText(f"error: {message}")

    def _on_cancelled(self) -> None:
        self.progress_bar.setValue(0)
        kept = f"; {self.output_path} is as it was" if self._replacing else ""
        self.stage_label.setText(f"Cancelled; the partial output was removed{kept}")
        self.tensor_label.clear()
        self.eta_label.clear()
        self.log.appendPlainText("cancelled")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.runner.shutdown()
        super().closeEvent(event)


def _stage_prefix(event: StageStarted | StageFinished) -> str:
    """``stage 2/3 NAME: `` in the log of a multi-stage merge; nothing for a single stage."""
    return f"stage {event.index + 1}/{event.count} {event.name}: " if event.count > 1 else ""
