"""Run an engine job off the GUI thread: one runner, one QThread, one worker moved onto it.

Every long task of the window runs here: a merge (:class:`~.merge_runner.MergeRunner`), a check
or a sweep, a layer analysis, a GGUF export, an MoE build. The worker drives the engine generator
that a job function makes from the cancel flag, and never touches widgets. The outcome is
announced only after the thread has finished, so a listener may start the next job (or quit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, QThread, Signal, Slot

from merger_gui.core.errors import UserError

Job = Callable[[threading.Event], Iterator[object]]


class _Worker(QObject):
    progress = Signal(object)
    outcome = Signal(str, object)  # "finished" (the last event) | "failed" (message) | "cancelled" (None)

    def __init__(self, job: Job, cancel: threading.Event, cancelled: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self._job, self._cancel, self._cancelled = job, cancel, cancelled

    @Slot()
    def run(self) -> None:
        try:
            last = None
            for event in self._job(self._cancel):
                self.progress.emit(event)
                last = event
            self.outcome.emit("finished", last)
        except self._cancelled:
            self.outcome.emit("cancelled", None)
        except UserError as exc:
            self.outcome.emit("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still reach the user, not kill the thread
            self.outcome.emit("failed", f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.thread().quit()


class JobRunner(QObject):
    """Owns one job's thread (a check, a sweep, an analysis, a merge); one job at a time.

    Signals:
        progress(event): every event of the engine.
        finished(last event), failed(message), cancelled(): the outcome, after the thread ended.
        running_changed(bool): a job started or ended.
    """

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, what: str = "job") -> None:
        super().__init__(parent)
        self.what = what  # names the job in messages and the thread
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self._cancel = threading.Event()
        self._outcome: tuple[str, object] | None = None
        self.last_thread: QThread | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self, job: Job, cancelled: tuple[type[BaseException], ...]) -> None:
        """Run ``job(cancel)``'s events on the thread; ``cancelled`` are the exceptions a cancel raises.

        Raises:
            RuntimeError: a job is already running.
        """
        if self._thread is not None:
            raise RuntimeError(f"a {self.what} is already running")
        self._cancel = threading.Event()
        self._outcome = None
        thread = QThread()
        thread.setObjectName(self.what)
        worker = _Worker(job, self._cancel, cancelled)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self.progress)
        worker.outcome.connect(self._store_outcome)
        thread.finished.connect(self._thread_finished)
        self._thread, self._worker, self.last_thread = thread, worker, thread
        thread.start()
        self.running_changed.emit(True)

    def cancel(self) -> None:
        """Ask the engine to stop at its next step; ``cancelled`` follows once it has."""
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
        kind, value = self._outcome or ("failed", f"the {self.what} stopped without a result")
        self.running_changed.emit(False)
        if kind == "finished":
            self.finished.emit(value)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(str(value))
