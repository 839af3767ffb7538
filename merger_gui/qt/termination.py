"""SIGTERM, SIGHUP and Ctrl-C reach the window as a Qt signal, so it can quit cleanly.

Python runs its signal handlers only when the interpreter gets control, which Qt's event
loop does not give it while idle: a SIGTERM would wait for the next mouse move, and the
default action would kill the app mid-merge, leaving a partial folder. The C-level handler
writes to a socket (``signal.set_wakeup_fd``) that a ``QSocketNotifier`` watches, so the
Python handler runs at once and emits :attr:`TerminationSignals.received`.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

from PySide6.QtCore import QObject, QSocketNotifier, Signal

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class TerminationSignals(QObject):
    """Emits :attr:`received` with the signal number when the process is asked to stop."""

    received = Signal(int)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._notifier = QSocketNotifier(self._reader.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._drain)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}

    def restore(self) -> None:
        """Put the previous handlers back (the app is quitting)."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._notifier.setEnabled(False)
        self._reader.close()
        self._writer.close()

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        self.received.emit(number)

    def _drain(self) -> None:
        try:
            while self._reader.recv(64):
                pass
        except BlockingIOError:
            pass
