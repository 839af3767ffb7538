"""The Analysis tab: two tiny donors analysed on a worker thread, cancel, a suggestion as one undo step, the cache."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape
from merger_gui.engine.layer_similarity import AnalysisCancelled, SimilarityDone, SimilarityProgress, compare_layers
from merger_gui.qt import analysis_job
from merger_gui.qt.analysis_panel import AnalysisPanel
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry

SHAPE = DonorShape(num_layers=4, hidden_size=32, intermediate_size=64, vocab_size=64)


def frankenmerge() -> Recipe:
    slices = (Slice((SliceSource("a", (0, 4)),)), Slice((SliceSource("b", (1, 4)),)))
    return Recipe((Stage("passthrough", slices=slices),))


def ranges(document: RecipeDocument) -> list[tuple[str, tuple[int, int]]]:
    return [(s.sources[0].model, s.sources[0].layer_range) for s in document.recipe.stages[0].slices]


@pytest.fixture
def panel(qtbot, make_donor, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    document = RecipeDocument(frankenmerge())
    registry = DonorRegistry()
    for name, seed in (("a", 1), ("b", 2)):
        folder = make_donor(name, SHAPE, seed=seed)
        registry.set_donor(name, str(folder), inspect_folder(folder))
    widget = AnalysisPanel(document, registry)
    qtbot.addWidget(widget)
    widget.block_spin.setValue(2)
    yield widget
    assert not widget.runner.is_running
    assert widget.runner.last_thread is None or widget.runner.last_thread.isFinished()


def analyse(panel, qtbot) -> None:
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start()
        assert not panel.analyse_button.isEnabled() and panel.cancel_button.isEnabled()


def test_two_donors_fill_the_heatmap_with_the_engines_matrix(panel, qtbot):
    assert (panel.first_combo.currentText(), panel.second_combo.currentText()) == ("a", "b")
    analyse(panel, qtbot)
    donors = [(n, panel.registry.donors[n]) for n in ("a", "b")]
    expected = next(e for e in compare_layers(donors) if isinstance(e, SimilarityDone)).result.similarity
    np.testing.assert_allclose(panel.heatmap.image, np.asarray(expected, dtype=np.float32))
    assert panel.heatmap.image.shape == (4, 4) and panel.progress_bar.value() == 1000
    if analysis_job.activations_available():
        assert len(panel.first_bars.opts["width"]) == 4 and len(panel.second_bars.opts["height"]) == 4
        assert panel.seam_list.count() == 1 and panel.seam_list.item(0).text().startswith("a 3 → b 1: ")
    assert any(analysis_job.cache_dir().glob("*.json"))
    assert str(analysis_job.cache_dir()).startswith(os.environ["XDG_CACHE_HOME"])


def test_cancel_stops_the_analysis(panel, qtbot, monkeypatch):
    def endless(donors, base=None, cancel: threading.Event | None = None, **_):
        while True:
            yield SimilarityProgress(0, 10, "reading")
            assert cancel is not None
            if cancel.wait(0.01):
                raise AnalysisCancelled("cancelled")

    monkeypatch.setattr(analysis_job, "compare_layers", endless)
    panel.runner.progress.connect(lambda _: panel.runner.cancel())
    with qtbot.waitSignal(panel.runner.cancelled, timeout=10000):
        panel.start()
    assert panel.status_label.text() == "Cancelled" and panel.result is None
    assert panel.analyse_button.isEnabled()


@pytest.mark.skipif(not analysis_job.activations_available(), reason="needs transformers")
def test_a_suggestion_applies_as_one_undo_step(panel, qtbot):
    analyse(panel, qtbot)
    blocks = panel.result.block_distance["a"]
    first = min(range(len(blocks)), key=blocks.__getitem__)
    drop = next(s for s in panel.suggestions if s.text.startswith("Drop a's"))
    assert f"2-layer block {first}–{first + 1}" in drop.text
    button = panel.suggestion_box.itemAt(panel.suggestions.index(drop)).widget()
    button.click()
    kept = [(a, b) for a, b in ((0, first), (first + 2, 4)) if a < b]
    assert ranges(panel.document) == [*(("a", r) for r in kept), ("b", (1, 4))]
    assert panel.document.undo_stack.count() == 1
    panel.document.undo_stack.undo()
    assert ranges(panel.document) == [("a", (0, 4)), ("b", (1, 4))]


def test_the_second_run_reads_the_cache(panel, qtbot, monkeypatch):
    analyse(panel, qtbot)
    first = panel.result

    def no_engine(*_, **__):
        raise AssertionError("the engine was called although the cache holds the result")

    for name in ("compare_layers", "analyze_activations", "analyze_seams"):
        monkeypatch.setattr(analysis_job, name, no_engine)
    analyse(panel, qtbot)
    assert panel.result.similarity == first.similarity and panel.result.seams == first.seams
    assert panel.result.layer_distance == first.layer_distance
    assert panel.result.cached == (4 if analysis_job.activations_available() else 1)  # similarity, 2 donors, seams
    assert "from the cache" in panel.status_label.text()


def test_donors_inspected_in_any_order_give_two_different_choices(qtbot, make_donor):
    document, registry = RecipeDocument(frankenmerge()), DonorRegistry()
    widget = AnalysisPanel(document, registry)
    qtbot.addWidget(widget)
    assert not widget.analyse_button.isEnabled()  # no donor yet
    for name in ("b", "a"):  # the second stage donor is ready first
        folder = make_donor(name, SHAPE)
        registry.set_donor(name, str(folder), inspect_folder(folder))
    assert {widget.first_combo.currentText(), widget.second_combo.currentText()} == {"a", "b"}
    assert widget.analyse_button.isEnabled() and widget.base_combo.currentText() == "(no base)"


def test_the_strips_span_the_heatmap_and_one_seam_takes_one_row(panel, qtbot):
    """Each strip has the heatmap's margins on its linked axis (the lower one room for the colour bar), so
    its axis shows the heatmap's layers and no more; the seam list is as tall as its seams."""
    panel.resize(520, 760)
    panel.show()
    qtbot.waitExposed(panel)
    analyse(panel, qtbot)

    def shown(plot, axis: int) -> tuple[float, float]:
        low, high = plot.getPlotItem().getViewBox().viewRange()[axis]
        return round(low, 1), round(high, 1)

    qtbot.waitUntil(lambda: shown(panel.second_strip, 0) == shown(panel.heatmap_plot, 0), timeout=3000)
    assert shown(panel.first_strip, 1) == shown(panel.heatmap_plot, 1)
    assert panel.second_strip.getPlotItem().getAxis("left").labelText == "distance"
    if panel.seam_list.count() == 1:  # the seams need transformers
        assert panel.seam_list.height() <= panel.seam_list.sizeHintForRow(0) + 2 * panel.seam_list.frameWidth() + 2


def test_the_heatmap_reads_top_down_like_the_designer(panel):
    for plot in (panel.heatmap_plot, panel.first_strip):
        assert plot.getPlotItem().getViewBox().yInverted()  # layer 0 at the top, as the stacks draw it
    assert not panel.second_strip.getPlotItem().getViewBox().yInverted()  # its bars grow upwards


def test_the_donors_follow_the_stage_order_not_the_inspection_order(qtbot, make_donor):
    registry = DonorRegistry()
    widget = AnalysisPanel(RecipeDocument(frankenmerge()), registry)
    qtbot.addWidget(widget)
    folders = {name: make_donor(name, SHAPE, seed=seed) for name, seed in (("a", 1), ("b", 2))}
    for name in ("b", "a"):  # b's inspection finishes first
        registry.set_donor(name, str(folders[name]), inspect_folder(folders[name]))
    assert (widget.first_combo.currentText(), widget.second_combo.currentText()) == ("a", "b")

    widget.first_combo.setCurrentIndex(1)
    widget.first_combo.activated.emit(1)  # the user's choice is kept through later refreshes
    registry.set_donor("a", str(folders["a"]), inspect_folder(folders["a"]))
    assert (widget.first_combo.currentText(), widget.second_combo.currentText()) == ("b", "a")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_suggestions_look_like_the_other_buttons_in_either_theme(panel, qtbot, monkeypatch, theme):
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QApplication

    from merger_gui.core.cut_suggestions import CutSuggestion
    from merger_gui.qt.theme import apply_theme

    apply_theme(QApplication.instance(), theme)  # the fixture restores the theme
    text = "Drop a's 2-layer block 1–2: the smallest change (0.213)"
    monkeypatch.setattr(panel, "_suggestions", lambda: [CutSuggestion(text, lambda stage: stage)])
    panel._show_suggestions()
    panel.resize(520, 600)
    panel.show()
    qtbot.waitExposed(panel)
    button = panel.suggestion_box.itemAt(0).widget()
    plain = panel.analyse_button
    assert button.height() == plain.height()
    ours, theirs = button.grab().toImage(), plain.grab().toImage()

    def column(image, x: int) -> list[QColor]:
        return [QColor(image.pixel(x, y)) for y in range(2, image.height() - 2)]

    for a, b in zip(column(ours, ours.width() - 6), column(theirs, theirs.width() - 6)):  # the bevel, not flat
        assert max(abs(a.red() - b.red()), abs(a.green() - b.green()), abs(a.blue() - b.blue())) <= 6, theme
    fill = QColor(ours.pixel(ours.width() - 6, ours.height() // 2))
    inked = [x for x in range(4, ours.width() - 4)
             if any(abs(QColor(ours.pixel(x, y)).lightness() - fill.lightness()) > 60
                    for y in range(4, ours.height() - 4))]
    assert inked[0] < 20 and inked[-1] < ours.width() * 0.8  # the sentence starts at the left
    assert button.minimumSizeHint().width() < button.fontMetrics().horizontalAdvance(text)  # elided, not wider
