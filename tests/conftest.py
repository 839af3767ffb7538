"""Shared fixtures: small random donors built on disk, the seed recipes, Qt isolation, leak checks."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# QSettings (native format) lives under XDG_CONFIG_HOME: never the user's own settings.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="merger-gui-tests-config-")

from merger_gui.core.synthetic import DonorShape, write_donor

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_RECIPES = REPO_ROOT / "resources" / "recipes"


@pytest.fixture
def make_donor(tmp_path):
    """Factory: ``make_donor("a", seed=1, shape=DonorShape(...), **write_donor_kwargs)`` → folder."""

    def factory(name: str, shape: DonorShape = DonorShape(), **kwargs) -> Path:
        return write_donor(tmp_path / name, shape, **kwargs)

    return factory


@pytest.fixture
def seed_recipe_path():
    """Path of a shipped seed recipe by file name (``rose-20b.yaml``, ``nyxene-11b.yaml``)."""
    return lambda name: SEED_RECIPES / name


_COLLECTORS: list = []


def _gui_thread_garbage_collector():
    """Collect cycles on the GUI thread only, as the app does (qt/app.py): Qt objects freed by a
    collection that happens to run on a worker thread warn ("Timers cannot be started…")."""
    if not _COLLECTORS:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _COLLECTORS.append(GarbageCollector(interval=0.5))
    return _COLLECTORS[0]


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each Qt test gets its own settings (a fresh application name) and keeps the theme it found."""
    if "PySide6.QtWidgets" not in sys.modules:
        yield
        return
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        yield
        return
    from merger_gui.qt.theme import apply_theme, current_theme

    org, name, theme = app.organizationName(), app.applicationName(), current_theme().name
    app.setOrganizationName("merger-gui-tests")
    app.setApplicationName(f"test-{time.monotonic_ns()}")
    collector = _gui_thread_garbage_collector()
    yield
    collector.check()  # this test's cycles go on the GUI thread, not in a later test's worker
    apply_theme(app, theme)
    app.setOrganizationName(org)
    app.setApplicationName(name)


# Threads libraries keep for the whole process (tqdm's monitor, started by the mergekit oracle).
# Qt's own threads show up as dummy threads once they run Python code; the runners wait for them.
LIBRARY_THREADS = ("tqdm_monitor",)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """A test must end every thread it started (merge writers, workers): a leak fails it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and t.name not in LIBRARY_THREADS and not isinstance(t, threading._DummyThread)]
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"threads still running after the test: {[t.name for t in leaked]}"
