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
from merger_gui.core.slice_edits import resize_slice
from merger_gui.qt.similarity_gap_item import GAP_X, SimilarityGapItem
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


PLANTED = [2, 0, 3, 1]  # a's layer i is most like b's layer PLANTED[i]


def planted_result(first: str = "a", second: str = "b") -> analysis_job.AnalysisResult:
    """A weight similarity (no activations) where a's layer i matches b's PLANTED[i] best."""
    matrix = [[0.95 - 0.01 * i if j == PLANTED[i] else 0.2 + 0.05 * j for j in range(4)] for i in range(4)]
    if (first, second) == ("b", "a"):
        matrix = [list(column) for column in zip(*matrix)]
    return analysis_job.AnalysisResult((first, second), 2, similarity=matrix)


def gap_items(win: MainWindow) -> list[SimilarityGapItem]:
    return [i for i in win.stack_view.scene().items() if isinstance(i, SimilarityGapItem)]


def assert_planted_heatmap(view, item: SimilarityGapItem) -> None:
    left, right = view.columns["a"], view.columns["b"]
    drawn = item.sceneBoundingRect()
    assert left.x() + left.width < drawn.left() and drawn.right() < right.x()  # in the gap, over neither column
    for row in range(4):  # each row beside a's layer, its brightest cell under b's planted layer
        top = item.mapToScene(0, view.geometry_.y(row)).y()
        assert top == pytest.approx(left.mapToScene(0, view.geometry_.y(row)).y())
        lightness = [item.cell_color(row, k).lightnessF() for k in range(len(item.bins))]
        assert lightness.index(max(lightness)) == item.column_of[PLANTED[row]]


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_the_similarity_heatmap_sits_in_the_gap_with_the_planted_match_brightest(window, order):
    view = window.stack_view
    view.set_analysis(planted_result(*order))
    [item] = gap_items(window)
    assert (item.left, item.right) == ("a", "b")  # rows follow the left column whatever the result's order
    assert_planted_heatmap(view, item)
    assert item.width >= 4 * len(item.bins)  # a few pixels per right layer, readable as a heatmap
    columns_before = {n: c.x() for n, c in view.columns.items()}
    window.document.apply_to_stage(lambda stage: resize_slice(stage, 0, end=3), "shorter")
    assert view.layer_map.num_layers == 6 and len(gap_items(window)) == 1
    assert {n: c.x() for n, c in view.columns.items()} == columns_before  # edits do not reflow the designer

    view.zoom_by(2.0)  # a new scale: the rows follow the layers
    [item] = gap_items(window)
    assert item.geometry == view.geometry_
    assert_planted_heatmap(view, item)


def test_hovering_a_heatmap_cell_names_both_layers_and_the_cosine(window, qtbot):
    view = window.stack_view
    view.set_analysis(planted_result())
    [item] = gap_items(window)
    view.centerOn(item)
    column = int(item.column_of[PLANTED[1]])
    x = GAP_X + (column + 0.5) * item.width / len(item.bins)
    scene_point = item.mapToScene(x, view.geometry_.y(1.5))
    qtbot.mouseMove(view.viewport(), view.mapFromScene(scene_point))
    qtbot.waitUntil(lambda: item.toolTip() != "")
    assert item.toolTip() == "a 1 ↔ b 0: cos 0.940\nmost similar to a 1: b 0 (cos 0.940)"
    assert item.text_at(x + item.width / len(item.bins), view.geometry_.y(1.5)).startswith("a 1 ↔ b 1: cos 0.250")


def test_the_heatmap_vanishes_with_the_overlay_or_for_other_donors(window):
    view = window.stack_view
    view.set_analysis(planted_result())
    assert len(gap_items(window)) == 1
    view.set_analysis(None)
    assert gap_items(window) == [] and view.similarity_gap is None
    view.set_analysis(planted_result("a", "c"))  # donors the designer does not show
    assert gap_items(window) == []
    view.set_analysis(analysis_job.AnalysisResult(("a", "b"), 2))  # no weight similarity
    assert gap_items(window) == []
