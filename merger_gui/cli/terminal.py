"""What the commands show on stderr while they work, and how a signal cancels them.

:class:`StatusLine` is one updating line on a terminal (nothing when stderr is a file or a pipe);
:func:`cancelling_signals` turns SIGINT, SIGTERM and SIGHUP into :class:`Interrupted`.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from merger_gui.core.units import format_duration
from merger_gui.engine.output import HELD_SIGNALS

from .common import printable


class StatusLine:
    """One updating line of progress on a terminal; nothing when the stream is not one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        """Replace the line with ``text`` (cut to the terminal's width)."""
        if not self.live:
            return
        width = _width()
        self.stream.write("\r" + printable(text)[: width - 1].ljust(width - 1))
        self.stream.flush()
        self.shown = True

    def bar(self, done: int, total: int, text: str, eta: float | None) -> None:
        """``[####....]  42% text 3 s left``: a bar as wide as the terminal leaves room for."""
        fraction = done / total if total else 1.0
        left = f" {format_duration(eta)} left" if eta is not None else ""
        detail = f" {fraction:4.0%} {text}{left}"
        cells = max(10, min(40, _width() - len(detail) - 3))
        filled = int(cells * fraction)
        self.show(f"[{'#' * filled}{'.' * (cells - filled)}]{detail}")

    def line(self, text: str) -> None:
        """Print ``text`` as a line of its own (the status line is cleared first)."""
        self.clear()
        print(printable(text), file=self.stream)

    def clear(self) -> None:
        if self.shown:
            width = _width()
            self.stream.write("\r" + " " * (width - 1) + "\r")
            self.stream.flush()
            self.shown = False


def _width() -> int:
    return shutil.get_terminal_size((100, 20)).columns


class Interrupted(KeyboardInterrupt):
    """Raised by the first SIGINT, SIGTERM or SIGHUP of a command."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupting_signal(stop: KeyboardInterrupt) -> int:
    """The signal behind a cancel (a plain KeyboardInterrupt is Ctrl-C's SIGINT)."""
    return stop.signum if isinstance(stop, Interrupted) else signal.SIGINT


def cancelled_how(signum: int) -> str:
    """``cancelled`` for Ctrl-C, ``cancelled by SIGTERM`` for the others."""
    return "cancelled" if signum == signal.SIGINT else f"cancelled by {signal.Signals(signum).name}"


@contextmanager
def cancelling_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP cancel like Ctrl-C: the first raises :class:`Interrupted`; later
    ones are ignored until the process ends, so the engine's clean-up runs to its end."""
    caught: list[int] = []

    def cancel(signum: int, _frame: object) -> None:
        caught.append(signum)
        for s in HELD_SIGNALS:  # ignored by the system (not only by Python) until the very end of the process
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, cancel) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if not caught:
                signal.signal(signum, handler)
