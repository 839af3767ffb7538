"""Wait until a window shows its real state: donors inspected, every debounced view refreshed."""

from __future__ import annotations

import time

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtWidgets import QWidget


def pending_timers(root: QWidget) -> list[QTimer]:
    """Active single-shot timers under ``root``: the debounces of views that have yet to refresh."""
    return [t for t in root.findChildren(QTimer) if t.isSingleShot() and t.isActive()]


def settle(window: QWidget, timeout_s: float = 60.0) -> bool:
    """Process events until ``window`` has nothing left to update, at most ``timeout_s``.

    Nothing is left when its donor inspector (``window.inspector``, if any) is idle and no
    debounce timer is running, twice in a row (a refresh may schedule another one).
    Returns False on timeout.
    """
    app = QCoreApplication.instance()
    assert app is not None  # the window exists, so the application does
    inspector = getattr(window, "inspector", None)
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        if inspector is not None and inspector.is_busy:
            inspector.wait(20)
            quiet = 0
        elif pending_timers(window):
            time.sleep(0.005)
            quiet = 0
        else:
            quiet += 1
            if quiet > 2:
                return True
        app.processEvents()
    return False
