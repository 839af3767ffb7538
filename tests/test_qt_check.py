"""The Check tab: a check on a worker thread beside the donors, the far-worse warning, cancel, a sweep."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("transformers")

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe import FilterRule, Parameters, Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape
from merger_gui.engine.evaluate import DonorScore, Evaluation, EvaluationProgress
from merger_gui.qt.check_panel import CheckPanel
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.live_plan import LivePlan
from merger_gui.qt.merge_panel import MergePanel
from merger_gui.qt.sweep_dialog import SweepRequest

SHAPE = DonorShape(num_layers=2, hidden_size=32, intermediate_size=64, vocab_size=64)
TEXT = " ".join(f"tok{3 + (i * 7) % 60}" for i in range(40))


def slerp() -> Recipe:
    sources = (SliceSource("a", (0, 2)), SliceSource("b", (0, 2)))
    return Recipe((Stage("slerp", slices=(Slice(sources),), base_model="a",
                         parameters=Parameters({"t": (FilterRule(0.5, "self_attn"), FilterRule(0.5))})),))


@pytest.fixture
def panel(qtbot, make_donor, tmp_path):
    document = RecipeDocument(slerp())
    registry = DonorRegistry()
    merge_panel = MergePanel(document, LivePlan(document, registry), registry)
    widget = CheckPanel(document, registry, merge_panel)
    qtbot.addWidget(merge_panel)
    qtbot.addWidget(widget)
    for name, seed in (("a", 1), ("b", 2)):
        folder = make_donor(name, SHAPE, seed=seed)
        registry.set_donor(name, str(folder), inspect_folder(folder))
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    widget.text_edit.setText(str(text))
    widget.new_tokens_spin.setValue(4)
    widget.prompt_edit.setText("tok5 tok6")
    merge_panel.folder_edit.setText(str(tmp_path / "merged"))
    yield widget
    assert not widget.runner.is_running
    assert widget.runner.last_thread is None or widget.runner.last_thread.isFinished()


def test_a_merge_output_is_checked_beside_its_donors(panel, qtbot, tmp_path):
    assert [panel.donor_list.item(i).text() for i in range(panel.donor_list.count())] == ["a", "b"]
    panel.merge_panel.merge_finished.emit(tmp_path / "a")  # as after a merge: that folder is proposed
    assert panel.model_combo.currentText() == str(tmp_path / "a")

    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_check()
        assert not panel.check_button.isEnabled() and panel.cancel_button.isEnabled()

    table = [[panel.table.item(r, c).text() for c in range(3)] for r in range(panel.table.rowCount())]
    assert [row[0] for row in table] == ["a", "b"]  # the model itself is not compared with itself
    assert table[1][2].endswith("%")
    assert panel.evaluation.perplexity > 1 and panel.evaluation.generation
    assert panel.generation_view.toPlainText() == panel.evaluation.generation
    assert panel.progress_bar.value() == 1000 and panel.check_button.isEnabled()


def test_a_merge_far_worse_than_every_donor_is_flagged(panel):
    donors = (DonorScore("x", 10.0, 0.5), DonorScore("y", 12.0, 0.4))
    panel.show_evaluation(Evaluation("merged", 100, 21.0, donors, "text"))
    assert not panel.warning_label.isHidden() and "twice the best donor" in panel.warning_label.text()
    panel.show_evaluation(Evaluation("merged", 100, 19.0, donors, "text"))
    assert panel.warning_label.isHidden()


def test_cancel_stops_the_check(panel, qtbot, tmp_path, monkeypatch):
    from merger_gui.engine import evaluate

    real_evaluate = evaluate.evaluate_model

    def paused_evaluate(model, against, options, cancel):
        # Hold the engine after its first step until the GUI's cancel lands, so a tiny model
        # cannot finish before the test cancels; the real engine then notices the flag.
        events = real_evaluate(model, against, options, cancel)
        yield next(events)
        assert cancel.wait(30)
        yield from events

    monkeypatch.setattr(evaluate, "evaluate_model", paused_evaluate)
    panel.set_model(tmp_path / "a")

    def cancel_at_first_step(event):
        if isinstance(event, EvaluationProgress):
            panel.runner.cancel()

    panel.runner.progress.connect(cancel_at_first_step)
    with qtbot.waitSignal(panel.runner.cancelled, timeout=60000):
        panel.start_check()
    assert panel.status_label.text().startswith("Cancelled")


def test_a_sweep_plots_each_variant_and_keeps_none(panel, qtbot, tmp_path):
    out = tmp_path / "sweep"
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_sweep(SweepRequest("t.self_attn", 0.2, 0.8, 2, out, keep=False))
    assert panel.sweep_plot.point_count() == 2
    assert not panel.sweep_plot.isHidden()
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]
    assert panel.status_label.text() == "Swept t.self_attn: 2 variants"


def test_the_window_has_a_check_tab(qtbot):
    from merger_gui.qt.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    tabs = [window.tools.tabText(i) for i in range(window.tools.count())]
    assert tabs[tabs.index("Merge") + 1] == "Check"


def test_the_donors_to_compare_follow_the_recipe_not_the_inspection_order(qtbot, make_donor):
    document = RecipeDocument(slerp())
    registry = DonorRegistry()
    merge_panel = MergePanel(document, LivePlan(document, registry), registry)
    widget = CheckPanel(document, registry, merge_panel)
    qtbot.addWidget(merge_panel)
    qtbot.addWidget(widget)
    for name, seed in (("b", 2), ("a", 1)):  # b's inspection finishes first
        folder = make_donor(name, SHAPE, seed=seed)
        registry.set_donor(name, str(folder), inspect_folder(folder))
    assert [widget.donor_list.item(i).text() for i in range(widget.donor_list.count())] == ["a", "b"]
