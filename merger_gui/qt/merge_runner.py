"""Run a merge off the GUI thread: one runner, one QThread, one worker moved onto it.

The worker drives :func:`merger_gui.engine.run.run_merge` (imported lazily: it imports
torch) over a frozen copy of the recipe and donors and never touches widgets. The runner
announces the outcome only after its thread has finished, so a listener may start the
next merge (or quit the app) straight away.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.core.recipe import Recipe
from merger_gui.engine.events import MergeCancelled, MergeDone


class _MergeWorker(QObject):
    progress = Signal(object)  # a MergeEvent
    outcome = Signal(str, object)  # "finished" (MergeDone) | "failed" (message) | "cancelled" (None)

    def __init__(self, recipe: Recipe, donors: dict[str, DonorInfo], out_dir: Path,
                 options: dict[str, Any], cancel: threading.Event) -> None:
        super().__init__()
        self._recipe = recipe
        self._donors = donors
        self._out_dir = out_dir
        self._options = options
        self._cancel = cancel

    @Slot()
    def run(self) -> None:
        from merger_gui.engine.run import MergeOptions, run_merge

        try:
            done = None
            for event in run_merge(self._recipe, self._donors, self._out_dir, MergeOptions(**self._options),
                                   self._cancel):
                self.progress.emit(event)
                if isinstance(event, MergeDone):
                    done = event
            self.outcome.emit("finished", done)
        except MergeCancelled:
            self.outcome.emit("cancelled", None)
        except UserError as exc:
            self.outcome.emit("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still reach the user, not kill the thread
            self.outcome.emit("failed", f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.thread().quit()


class MergeRunner(QObject):
    """Owns the merge thread; one merge at a time.

    Signals:
        progress(event): every event of the engine (stage started, tensor progress, warnings…).
        finished(MergeDone), failed(message), cancelled(): the outcome, after the thread ended.
        running_changed(bool): a merge started or ended.
    """

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _MergeWorker | None = None
        self._cancel = threading.Event()
        self._outcome: tuple[str, object] | None = None
        self.last_thread: QThread | None = None  # kept (finished) for callers that check it

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self, recipe: Recipe, donors: Mapping[str, DonorInfo], out_dir: str | Path,
              **options: Any) -> None:
        """Merge ``recipe`` into ``out_dir``; ``options`` are :class:`MergeOptions` fields
        (``device``, ``overwrite``, ``shard_size``…).

        Raises:
            RuntimeError: a merge is already running.
        """
        if self._thread is not None:
            raise RuntimeError("a merge is already running")
        self._cancel = threading.Event()
        self._outcome = None
        thread = QThread()
        thread.setObjectName("merge")
        worker = _MergeWorker(recipe, dict(donors), Path(out_dir), dict(options), self._cancel)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self.progress)
        worker.outcome.connect(self._store_outcome)
        thread.finished.connect(self._thread_finished)
        self._thread, self._worker = thread, worker
        self.last_thread = thread
        thread.start()
        self.running_changed.emit(True)

    def cancel(self) -> None:
        """Ask the engine to stop between tensors; ``cancelled`` follows once it has cleaned up."""
        self._cancel.set()

    def shutdown(self) -> None:
        """Cancel and block until the thread has ended (for closing the window)."""
        if self._thread is not None:
            self._cancel.set()
            self._thread.wait()

    @Slot(str, object)
    def _store_outcome(self, kind: str, value: object) -> None:
        self._outcome = (kind, value)

    @Slot()
    def _thread_finished(self) -> None:
        thread, worker = self._thread, self._worker
        if thread is None:
            return
        thread.wait()
        self._thread, self._worker = None, None
        if worker is not None:
            worker.deleteLater()
        kind, value = self._outcome or ("failed", "the merge stopped without a result")
        self.running_changed.emit(False)
        if kind == "finished":
            self.finished.emit(value)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(str(value))
