"""Build the MoE from its page: output folder, Merge / Cancel, progress, on a worker thread.

The job drives :func:`merger_gui.engine.moe.run_moe` (imported on the worker: it imports torch)
through the generic :class:`~.job_runner.JobRunner`. With a prompt-reading gate mode the engine
first computes the routers: the bar is busy while the base model loads, then counts the prompt
batches read (:class:`GateProgress`), then the tensors written; a cancel stops before the next
forward pass or tensor.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QMessageBox, QProgressBar, QPushButton, QVBoxLayout,
    QWidget,
)

from merger_gui.core.donor import DonorInfo
from merger_gui.core.moe_recipe import MoeRecipe, moe_problems
from merger_gui.core.output_folders import replace_refusal
from merger_gui.core.units import format_duration, format_size
from merger_gui.engine.events import GateProgress, MergeCancelled, MergeDone, StageStarted, TensorProgress

from .job_runner import JobRunner
from .merge_panel import ERROR_STYLE, OK_STYLE
from .user_folders import user_folder

GATE_STEPS = {
    "hidden": "Computing the routers: the base model reads each expert's prompts…",
    "cheap_embed": "Computing the routers from the prompts' token embeddings…",
}


def moe_output_name(recipe_path: Path | None) -> str:
    """A folder name for the MoE: the recipe file's name, else ``moe-model``."""
    name = recipe_path.stem if recipe_path else "moe-model"
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "moe-model"


class MoeMergeBox(QGroupBox):
    """Merges the MoE recipe it was last shown into a folder; one merge at a time."""

    merge_finished = Signal(object)  # the output Path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Merge", parent)
        self.runner = JobRunner(self, what="MoE merge")
        self.recipe: MoeRecipe | None = None
        self.donors: Mapping[str, DonorInfo] = {}
        self.recipe_path: Path | None = None
        self.output_path: Path | None = None
        self._suggested = ""
        self._replacing = False

        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder to create, e.g. ~/models/my-moe")
        self.folder_edit.textChanged.connect(self.update_state)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.merge_button = QPushButton("Merge")
        self.merge_button.clicked.connect(self.start_merge)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_merge)
        self.open_button = QPushButton("Open folder")
        self.open_button.clicked.connect(self._open_output)
        self.open_button.hide()
        row = QHBoxLayout()
        row.addWidget(QLabel("Output folder"))
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.merge_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.open_button)
        self.blocker_label = QLabel()
        self.blocker_label.setWordWrap(True)
        self.blocker_label.setStyleSheet(ERROR_STYLE)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.hide()  # until the first merge
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.hide()
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.blocker_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)

        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.running_changed.connect(self.update_state)
        self.update_state()

    def show_recipe(self, recipe: MoeRecipe, donors: Mapping[str, DonorInfo], recipe_path: Path | None) -> None:
        """Merge ``recipe`` next (a running merge goes on with the recipe it started with)."""
        self.recipe, self.donors, self.recipe_path = recipe, donors, recipe_path
        self._suggest_folder()
        self.update_state()

    def blockers(self) -> list[str]:
        """Why the recipe cannot be merged now (empty when it can); the page lists its problems."""
        if self.recipe is None:
            return ["open an MoE recipe"]
        reasons = ["fix the problems listed above"] if moe_problems(self.recipe, self.donors) else []
        remote = [name for name in self.recipe.referenced_models if name in self.donors and not self.donors[name].path]
        if remote:
            reasons.append(f"no local weights for {', '.join(remote)} (shape profiles, or not downloaded yet)")
        if not self.folder_edit.text().strip():
            reasons.append("choose an output folder")
        return reasons

    def update_state(self, *_: object) -> None:
        running = self.runner.is_running
        reasons = [] if running else self.blockers()
        self.blocker_label.setText("Cannot merge yet: " + "; ".join(reasons) if reasons else "")
        self.blocker_label.setVisible(bool(reasons))
        self.merge_button.setEnabled(not running and not reasons)
        self.cancel_button.setEnabled(running)
        self.folder_edit.setEnabled(not running)

    def output_folder(self) -> Path:
        """The chosen folder; a relative one is taken from the recipe file's folder (else home)."""
        path = Path(self.folder_edit.text().strip()).expanduser()
        return path if path.is_absolute() else (self.recipe_path.parent if self.recipe_path else Path.home()) / path

    def confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing an existing folder, as the Merge tab does; refuse what
        :func:`replace_refusal` protects (the recipe, a donor, home, a folder that is not a model)."""
        folders = [(name, Path(d.path)) for name, d in self.donors.items() if d.path]
        refusal = replace_refusal(path, self.recipe_path, folders)
        if refusal:
            QMessageBox.warning(self, "Folder not replaced", f"{refusal}.")
            return False
        buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        answer = QMessageBox.question(
            self, "Replace folder?", f"{path} already exists.\nReplace it with the MoE once the merge completes?",
            buttons, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def start_merge(self) -> bool:
        """Start building the MoE into the chosen folder; False when blocked or declined."""
        if self.runner.is_running or self.blockers() or self.recipe is None:
            return False
        path = self.output_folder()
        self.folder_edit.setText(str(path))
        overwrite = path.exists() or path.is_symlink()
        if overwrite and not self.confirm_overwrite(path):
            return False
        self.output_path, self._replacing = path, overwrite
        self.open_button.hide()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.show()
        self.status_label.show()
        self.status_label.setStyleSheet("")
        self.status_label.setText("Checking donors…")
        recipe, donors, recipe_path = self.recipe, dict(self.donors), self.recipe_path

        def job(cancel: threading.Event) -> Iterator[object]:
            from merger_gui.engine.moe import run_moe
            from merger_gui.engine.run import MergeOptions

            options = MergeOptions(overwrite=overwrite, recipe_path=recipe_path)
            return run_moe(recipe, donors, path, options, cancel)

        self.runner.start(job, (MergeCancelled,))
        return True

    def cancel_merge(self) -> None:
        if self.runner.is_running:
            self.status_label.setText("Cancelling…")
            self.runner.cancel()

    def _on_progress(self, event: object) -> None:
        if isinstance(event, StageStarted) and self.recipe is not None:
            step = GATE_STEPS.get(self.recipe.gate_mode)
            if step:
                self.progress_bar.setRange(0, 0)  # busy: no step count until the tensors
                self.status_label.setText(step)
        elif isinstance(event, GateProgress):
            self.progress_bar.setRange(0, event.total)
            self.progress_bar.setValue(event.done)
            self.status_label.setText(f"Computing the routers: {event.done} of {event.total} prompt batches read "
                                      f"({event.expert}: {event.model})")
        elif isinstance(event, TensorProgress):
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * event.overall_index / max(1, event.overall_count)))
            self.status_label.setText(f"Writing {event.name} ({event.index}/{event.count}, "
                                      f"{format_size(event.bytes_written)} of {format_size(event.total_bytes)})")

    def _on_finished(self, done: MergeDone | None) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(1000)
        if done is not None:
            self.output_path = Path(done.path)
        took = f" ({done.tensors} tensors, {format_size(done.bytes_written)} in {format_duration(done.seconds)})" \
            if done is not None else ""
        self.status_label.setStyleSheet(OK_STYLE)
        self.status_label.setText(f"The MoE is in {self.output_path}{took}")
        self.open_button.show()
        self.merge_finished.emit(self.output_path)

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.status_label.setStyleSheet(ERROR_STYLE)
        self.status_label.setText(f"The merge failed: {message}")

    def _on_cancelled(self) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        kept = f"; {self.output_path} is as it was" if self._replacing else ""
        self.status_label.setStyleSheet("")
        self.status_label.setText(f"Cancelled; the partial output was removed{kept}")

    def _suggest_folder(self) -> None:
        """Propose a folder beside the recipe, unless the user chose one."""
        if self.folder_edit.text().strip() not in ("", self._suggested) or self.runner.is_running:
            return
        parent = user_folder(self.recipe_path.parent if self.recipe_path else None)
        self._suggested = str(parent / moe_output_name(self.recipe_path))
        self.folder_edit.setText(self._suggested)

    def _browse(self) -> None:
        start = str(Path(self.folder_edit.text()).expanduser().parent) if self.folder_edit.text() else str(Path.home())
        parent = QFileDialog.getExistingDirectory(self, "Create the MoE in…", start)
        if parent:
            self.folder_edit.setText(str(Path(parent) / moe_output_name(self.recipe_path)))

    def _open_output(self) -> None:
        if self.output_path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.output_path)))
