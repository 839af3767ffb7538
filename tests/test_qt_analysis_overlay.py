"""The designer's analysis overlay: distance strips beside the donor columns, seams coloured by distance."""

from __future__ import annotations

import gc

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QCoreApplication, QEvent, QSettings, QThreadPool

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape
from merger_gui.qt import analysis_job
from merger_gui.qt.analysis_items import DistanceStripItem
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings

SHAPE = DonorShape(num_layers=4, hidden_size=32, intermediate_size=64, vocab_size=64)


def frankenmerge(*ranges: tuple[str, int, int]) -> Recipe:
    return Recipe((Stage("passthrough", slices=tuple(Slice((SliceSource(m, (s, e)),)) for m, s, e in ranges)),))


@pytest.fixture
def window(qtbot, tmp_path, make_donor, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    win = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    win.show_designer()
    win.document.load(frankenmerge(("a", 0, 4), ("b", 1, 4)))
    for name, seed in (("a", 1), ("b", 2)):
        folder = make_donor(name, SHAPE, seed=seed)
        win.registry.set_donor(name, str(folder), inspect_folder(folder))
    win.live_plan.refresh_now()
    win.analysis_panel.block_spin.setValue(2)
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    del win
    gc.collect()  # the window's wrappers go here, not on the next test's worker thread (Qt timer warnings)


def strips(win: MainWindow) -> list[DistanceStripItem]:
    return [i for i in win.stack_view.scene().items() if isinstance(i, DistanceStripItem)]


def test_without_an_analysis_nothing_is_drawn(window):
    assert strips(window) == [] and window.stack_view.strips == {}
    assert window.stack_view.output is not None and window.stack_view.output.seam_marks == {}
    window.document.apply_to_stage(lambda s: s, "no-op")
    assert strips(window) == []


@pytest.mark.skipif(not analysis_job.activations_available(), reason="layer distances need transformers")
def test_an_analysis_draws_strips_with_the_engines_values_and_colours_the_seam(window, qtbot):
    panel, view = window.analysis_panel, window.stack_view
    gc.collect()  # items the set-up replaced are freed here, not on the worker thread (Qt timer warnings)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start()
    result = panel.result
    assert result is not None and view.analysis is result
    drawn = {s.name: s for s in strips(window)}
    assert set(drawn) == {"a", "b"}
    for name, strip in drawn.items():
        assert strip.distances == result.layer_distance[name] and len(strip.distances) == 4
        column = view.columns[name]
        assert strip.x() >= column.x() + column.width  # beside its column, not over it
        assert strip.boundingRect().height() == pytest.approx(4 * view.geometry_.cell_h)
    output = view.output
    assert output is not None and set(output.seam_marks) == {4}  # a 3 → b 1 starts output layer 4
    seam = result.seams[0]
    assert f"distance {seam.distance:.3f}" in output.layer_text(4)
    assert f"closest input: b {seam.best_to_layer}" in output.layer_text(4)

    # an edit keeps the overlay; a seam the analysis did not measure is not coloured
    window.document.load(frankenmerge(("a", 0, 4), ("b", 2, 4)))
    window.live_plan.refresh_now()
    assert set(s.name for s in strips(window)) == {"a", "b"} and view.output.seam_marks == {}
    view.set_analysis(None)
    assert strips(window) == [] and view.output.seam_marks == {}
