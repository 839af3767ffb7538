"""The Check tab: is the merge any good? Perplexity beside the donors', agreement, a test prompt, sweeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtGui import QCloseEvent, QFont
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QListWidget,
    QListWidgetItem, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem,
    QVBoxLayout, QWidget,
)
from PySide6.QtCore import Qt

from merger_gui.core.readiness import merge_readiness
from merger_gui.engine.evaluate import (
    Evaluation, EvaluationCancelled, EvaluationDone, EvaluationOptions, EvaluationProgress, EvaluationWarning,
)
from merger_gui.engine.events import TensorProgress

from .job_runner import JobRunner
from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .merge_panel import ERROR_STYLE, MergePanel
from .sweep_dialog import SweepDialog, SweepRequest
from .sweep_plot import SweepPlot

if TYPE_CHECKING:  # the sweep module imports the merge engine: loaded when a sweep starts
    from merger_gui.engine.sweep import VariantResult

DEFAULT_PROMPT = "Write two sentences about the sea."
PATH_ROLE = Qt.ItemDataRole.UserRole


@dataclass
class _SweepFigures:
    """A running sweep's variants so far, as the plot draws them, and where it is."""

    param: str
    values: list[float] = field(default_factory=list)
    perplexities: list[float] = field(default_factory=list)
    agreements: dict[str, list[float | None]] = field(default_factory=dict)
    donors: dict[str, float] = field(default_factory=dict)
    at: tuple[int, int] | None = None  # (variants done, count) once the first variant started
    running: bool = True

    def add(self, result: VariantResult) -> None:
        self.values.append(result.value)
        self.perplexities.append(result.perplexity)
        for name, agreement in result.agreement.items():
            self.agreements.setdefault(name, []).append(agreement)


class CheckPanel(QWidget):
    """Evaluates a model folder (the last merge, or any donor) against the recipe's donors, and sweeps.

    Args:
        document: The open recipe (what a sweep merges).
        registry: Its donors: the folders to compare with.
        merge_panel: Its ``merge_finished`` makes the new model the one to check.
    """

    def __init__(self, document: RecipeDocument, registry: DonorRegistry, merge_panel: MergePanel,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document, self.registry, self.merge_panel = document, registry, merge_panel
        self.runner = JobRunner(self, what="check")
        self.evaluation: Evaluation | None = None
        self._names: dict[str, str] = {}  # donor folder -> recipe name, for the table
        self._sweep: _SweepFigures | None = None  # the last sweep's figures

        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setToolTip("A model folder: the last merge's output or any donor with weights")
        if (line_edit := self.model_combo.lineEdit()) is not None:
            line_edit.setPlaceholderText("merge first, or choose a model folder")
        self.model_combo.currentTextChanged.connect(self.update_state)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(browse)
        self.donor_list = QListWidget()
        self.donor_list.setMaximumHeight(90)
        self.donor_list.setToolTip("Donors to compare with (loaded one after another)")
        self.prompt_edit = QLineEdit(DEFAULT_PROMPT)
        self.prompt_edit.setToolTip("Greedy generation from this prompt (through the chat template when the "
                                    "tokenizer has one); empty: no generation")
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("the sample text (public-domain prose)")
        self.text_edit.setToolTip("A UTF-8 text file to score instead of the sample text")
        text_browse = QPushButton("Browse…")
        text_browse.clicked.connect(self._browse_text)
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_edit, 1)
        text_row.addWidget(text_browse)
        self.max_tokens_spin = _spin(2, 1_000_000, 1024, "The text is cut to this many tokens")
        self.new_tokens_spin = _spin(1, 4096, 48, "At most this many generated tokens")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["cpu", "cuda"])
        limits = QHBoxLayout()
        for label, widget in (("Tokens", self.max_tokens_spin), ("New tokens", self.new_tokens_spin),
                              ("Device", self.device_combo)):
            limits.addWidget(QLabel(label))
            limits.addWidget(widget)
        limits.addStretch(1)
        form = QFormLayout()
        form.addRow("Model", model_row)
        form.addRow("Compare with", self.donor_list)
        form.addRow("Prompt", self.prompt_edit)
        form.addRow("Text", text_row)
        form.addRow(limits)

        self.check_button = QPushButton("Check")
        self.check_button.setDefault(True)
        self.check_button.clicked.connect(self.start_check)
        self.sweep_button = QPushButton("Sweep…")
        self.sweep_button.setToolTip("Merge and check the recipe at several values of one parameter")
        self.sweep_button.clicked.connect(self.ask_sweep)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.runner.cancel)
        buttons = QHBoxLayout()
        for button in (self.check_button, self.sweep_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet(ERROR_STYLE)
        self.warning_label.hide()
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Model", "Perplexity", "Agreement"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(140)
        self.generation_view = QPlainTextEdit()
        self.generation_view.setReadOnly(True)
        self.generation_view.setPlaceholderText("The text the model generates from the prompt appears here.")
        self.generation_view.setMaximumHeight(120)
        self.sweep_plot = SweepPlot()
        self.sweep_plot.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.table)
        layout.addWidget(self.generation_view)
        layout.addWidget(self.sweep_plot, 1)
        layout.addStretch(0)  # takes the spare height while no sweep is shown, so the rows stay together

        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.running_changed.connect(self.update_state)
        registry.changed.connect(self._refresh_donors)
        merge_panel.merge_finished.connect(self.set_model)
        self._refresh_donors()

    # --- inputs ------------------------------------------------------------------------------

    def set_model(self, path: Path | str | None) -> None:
        """Check ``path`` next (a merge's output: it is proposed first)."""
        if path is None:
            return
        if self.model_combo.findText(str(path)) < 0:
            self.model_combo.insertItem(0, str(path))
        self.model_combo.setCurrentText(str(path))

    def _refresh_donors(self) -> None:
        """The donors with a local folder: candidates to compare with (checked) and to check."""
        checked = {self.donor_list.item(i).data(PATH_ROLE) for i in range(self.donor_list.count())
                   if self.donor_list.item(i).checkState() == Qt.CheckState.Unchecked}
        self.donor_list.clear()
        self._names = {}
        models = dict.fromkeys(m for stage in self.document.recipe.stages for m in stage.referenced_models)
        order = {m: i for i, m in enumerate(models)}
        donors = sorted(self.registry.donors.items(), key=lambda item: order.get(item[0], len(order)))
        for name, info in donors:  # the recipe's order, not the order inspections finished in
            if info.kind != "folder" or not info.path:
                continue
            self._names[info.path] = name
            item = QListWidgetItem(name)
            item.setToolTip(info.path)
            item.setData(PATH_ROLE, info.path)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if info.path in checked else Qt.CheckState.Checked)
            self.donor_list.addItem(item)
            if self.model_combo.findText(info.path) < 0:
                self.model_combo.addItem(info.path)
        self.update_state()

    def against(self) -> list[str]:
        """The checked donors' folders."""
        items = [self.donor_list.item(i) for i in range(self.donor_list.count())]
        return [item.data(PATH_ROLE) for item in items if item.checkState() == Qt.CheckState.Checked]

    def options(self) -> EvaluationOptions:
        from merger_gui.engine.evaluate import read_text_file

        max_tokens = self.max_tokens_spin.value()
        text = read_text_file(self.text_edit.text().strip(), max_tokens) if self.text_edit.text().strip() else None
        return EvaluationOptions(text=text, max_tokens=max_tokens, prompt=self.prompt_edit.text().strip() or None,
                                 max_new_tokens=self.new_tokens_spin.value(), device=self.device_combo.currentText())

    def update_state(self, *_: object) -> None:
        running = self.runner.is_running
        self.check_button.setEnabled(not running and bool(self.model_combo.currentText().strip()))
        self.sweep_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder to check", self.model_combo.currentText())
        if folder:
            self.set_model(folder)

    def _browse_text(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Text to score", "", "Text (*.txt *.md);;All files (*)")
        if file:
            self.text_edit.setText(file)

    # --- running -----------------------------------------------------------------------------

    def start_check(self) -> bool:
        """Evaluate the chosen model on a worker thread; False when there is nothing to check."""
        model = self.model_combo.currentText().strip()
        if self.runner.is_running or not model:
            return False
        try:
            options = self.options()
        except Exception as exc:  # noqa: BLE001 - a UserError reading the text file, shown as such
            self._on_failed(str(exc))
            return False
        against = [d for d in self.against() if Path(d) != Path(model)]
        self._begin(f"Checking {Path(model).name}…")

        def job(cancel: threading.Event) -> Iterator[object]:
            from merger_gui.engine.evaluate import evaluate_model

            return evaluate_model(model, against, options, cancel)

        self.runner.start(job, (EvaluationCancelled,))
        return True

    def ask_sweep(self) -> None:
        """Ask what to sweep (a dialog), then run it."""
        from merger_gui.engine.sweep import sweep_paths

        recipe = self.document.recipe
        blockers = merge_readiness(recipe, self.registry.donors, self.registry.errors)
        if blockers or not recipe.stages:
            QMessageBox.warning(self, "Cannot sweep", "The recipe cannot be merged yet:\n• "
                                + "\n• ".join(blockers[:4] or ["it has no stage"]))
            return
        out = self.merge_panel.output_folder()
        dialog = SweepDialog(sweep_paths(recipe.stages[-1]), out.with_name(f"{out.name}-sweep"), self)
        if dialog.exec() == SweepDialog.DialogCode.Accepted:
            self.start_sweep(dialog.request())

    def start_sweep(self, request: SweepRequest) -> bool:
        """Merge and evaluate the open recipe at each value of ``request``, plotting as variants finish."""
        from merger_gui.engine.run import MergeOptions
        from merger_gui.engine.sweep import SweepCancelled, SweepOptions, run_sweep, stepped_values

        if self.runner.is_running:
            return False
        try:
            evaluation = self.options()
            values = stepped_values(request.start, request.stop, request.steps)
        except Exception as exc:  # noqa: BLE001 - a UserError, shown as such
            self._on_failed(str(exc))
            return False
        recipe, donors = self.document.recipe, dict(self.registry.donors)
        options = SweepOptions(keep=request.keep, evaluation=evaluation,
                               merge=MergeOptions(device=evaluation.device, recipe_path=self.document.path))
        self._sweep = _SweepFigures(request.param)
        self.sweep_plot.show()
        self.sweep_plot.show_results(request.param, [], [], {}, {})
        self._begin(f"Sweeping {request.param} over {', '.join(f'{v:g}' for v in values)}…")

        def job(cancel: threading.Event) -> Iterator[object]:
            return run_sweep(recipe, donors, request.out_dir, request.param, values, options, cancel)

        self.runner.start(job, (SweepCancelled, EvaluationCancelled))
        return True

    def _begin(self, message: str) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setStyleSheet("")
        self.status_label.setText(message)
        self.warning_label.hide()

    # --- events ------------------------------------------------------------------------------

    def _on_progress(self, event: object) -> None:
        from merger_gui.engine.sweep import SweepDone, VariantDone, VariantStarted

        if isinstance(event, EvaluationProgress):
            self._set_progress(event.step / event.steps, event.message, 0.5 if self._sweeping() else 0.0)
        elif isinstance(event, EvaluationWarning):
            self.status_label.setText(f"{self.status_label.text()}\n{event.message}")
        elif isinstance(event, EvaluationDone):
            self.show_evaluation(event.evaluation)
        elif isinstance(event, VariantStarted) and self._sweep is not None:
            self._sweep.at = (event.index, event.count)
            self._set_progress(0.0, f"{self._sweep.param} = {event.value:g} ({event.index + 1}/{event.count}): "
                               "merging…", 0.0)
        elif isinstance(event, TensorProgress):
            self._set_progress(event.overall_index / max(1, event.overall_count), None, 0.0)
        elif isinstance(event, VariantDone) and self._sweep is not None:
            self._sweep.at = (event.index + 1, event.count)
            self._sweep.add(event.result)
            self._plot_sweep()
        elif isinstance(event, SweepDone) and self._sweep is not None:
            self._sweep.donors = dict(event.result.donors)
            self._plot_sweep()
            self.status_label.setText(f"Swept {event.result.param}: {len(event.result.variants)} variants")

    def _sweeping(self) -> bool:
        return self._sweep is not None and self._sweep.running and self._sweep.at is not None

    def _set_progress(self, fraction: float, message: str | None, offset: float) -> None:
        """The bar: a sweep's variants share it (merging the first half of each, evaluating the second)."""
        if self._sweep is not None and self._sweep.running and self._sweep.at is not None:
            index, count = self._sweep.at
            fraction = (index + offset + fraction / 2) / count
        self.progress_bar.setValue(int(1000 * min(1.0, fraction)))
        if message:
            self.status_label.setText(message)

    def _plot_sweep(self) -> None:
        sweep = self._sweep
        if sweep is not None:
            self.sweep_plot.show_results(sweep.param, sweep.values, sweep.perplexities, sweep.agreements,
                                         sweep.donors)

    def show_evaluation(self, evaluation: Evaluation) -> None:
        """The figures of the model beside its donors', its generation, and a warning when it is far worse."""
        self.evaluation = evaluation
        rows: list[tuple[str, float, float | None, bool]] = [(Path(evaluation.model).name, evaluation.perplexity,
                                                              None, True)]
        rows += [(self._names.get(d.donor, Path(d.donor).name), d.perplexity, d.agreement, False)
                 for d in evaluation.against]
        self.table.setRowCount(len(rows))
        for row, (name, perplexity, agreement, own) in enumerate(rows):
            cells = [name, f"{perplexity:,.2f}", "—" if own else "n/a" if agreement is None else f"{agreement:.1%}"]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if own:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, column, item)
        self.generation_view.setPlainText(evaluation.generation or "")
        best = min((d.perplexity for d in evaluation.against), default=None)
        self.warning_label.setVisible(evaluation.far_worse)
        if evaluation.far_worse and best is not None:
            self.warning_label.setText(f"The perplexity of {Path(evaluation.model).name} "
                                       f"({evaluation.perplexity:,.2f}) is more than twice the best donor's "
                                       f"({best:,.2f}): the merge is probably broken (check t, the slices and "
                                       "the tokenizer).")

    def _on_finished(self, last: object) -> None:
        self.progress_bar.setValue(1000)
        if isinstance(last, EvaluationDone):
            self.status_label.setText(f"Checked {Path(last.evaluation.model).name} on "
                                      f"{last.evaluation.tokens} tokens")
        self._stop_sweep()

    def _on_failed(self, message: str) -> None:
        self.progress_bar.setValue(0)
        self.status_label.setStyleSheet(ERROR_STYLE)
        self.status_label.setText(f"The check failed: {message}")
        self._stop_sweep()

    def _on_cancelled(self) -> None:
        self.progress_bar.setValue(0)
        resume = " (a sweep resumes from its folder when started again)" if self._sweeping() else ""
        self.status_label.setText(f"Cancelled{resume}")
        self._stop_sweep()

    def _stop_sweep(self) -> None:
        if self._sweep is not None:
            self._sweep.running = False

    def closeEvent(self, event: QCloseEvent) -> None:
        self.runner.shutdown()
        super().closeEvent(event)


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin
