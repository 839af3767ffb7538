"""The merge panel and runner: a real merge on a worker thread, cancelling, blockers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.synthetic import DonorShape
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.merge_panel import MergePanel
from merger_gui.qt.live_plan import LivePlan

SHAPE = DonorShape(num_layers=6)


def passthrough() -> Recipe:
    return Recipe((Stage("passthrough", slices=(Slice((SliceSource("a", (0, 4)),)),
                                                 Slice((SliceSource("b", (2, 6)),))), dtype="float16"),))


@pytest.fixture
def panel(qtbot, make_donor, tmp_path):
    document = RecipeDocument(passthrough())
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    widget = MergePanel(document, live_plan, registry)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(live_plan.plan_changed, timeout=3000):
        for name, seed in (("a", 1), ("b", 2)):
            folder = make_donor(name, SHAPE, seed=seed)
            registry.set_donor(name, str(folder), inspect_folder(folder))
    widget.folder_edit.setText(str(tmp_path / "out"))
    yield widget
    assert not widget.runner.is_running
    assert widget.runner.last_thread is None or widget.runner.last_thread.isFinished()


def test_merge_runs_to_completion(panel, qtbot, tmp_path):
    assert panel.merge_button.isEnabled() and panel.blocker_label.isHidden()
    progress = []
    panel.runner.progress.connect(progress.append)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000) as done:
        assert panel.start_merge()
        assert not panel.merge_button.isEnabled() and panel.cancel_button.isEnabled()
    assert panel.runner.last_thread.isFinished()
    out = tmp_path / "out"
    assert done.args[0].path == out
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 8
    assert any(type(e).__name__ == "TensorProgress" for e in progress)
    assert panel.progress_bar.value() == 1000
    assert not panel.open_button.isHidden() and str(out) in panel.result_label.text()
    assert panel.merge_button.isEnabled()


def test_cancel_after_first_progress_leaves_no_output(panel, qtbot, tmp_path, monkeypatch):
    from merger_gui.engine import run

    real_run_merge = run.run_merge

    def paused_run_merge(recipe, donors, out_dir, options, cancel):
        # Hold the engine after each tensor until the GUI's cancel lands, so tiny donors
        # cannot finish before the test cancels.
        for event in real_run_merge(recipe, donors, out_dir, options, cancel):
            yield event
            if type(event).__name__ == "TensorProgress":
                cancel.wait(10)

    monkeypatch.setattr(run, "run_merge", paused_run_merge)
    panel.runner.progress.connect(lambda e: panel.cancel_merge() if type(e).__name__ == "TensorProgress" else None)
    with qtbot.waitSignal(panel.runner.cancelled, timeout=60000):
        panel.start_merge()
    assert panel.runner.last_thread.isFinished()
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert "Cancelled" in panel.stage_label.text()


def test_existing_folder_asks_before_overwriting(panel, qtbot, tmp_path):
    (tmp_path / "out").mkdir()
    panel.confirm_overwrite = lambda path, donors: False
    assert not panel.start_merge()
    assert not panel.runner.is_running
    panel.confirm_overwrite = lambda path, donors: True
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_merge()
    assert (tmp_path / "out" / "config.json").exists()


def test_profiles_and_missing_donors_block_merging(panel):
    panel.registry.set_donor("b", "profile:llama-2-7b", load_profile("llama-2-7b"))
    panel.live_plan.refresh_now()
    assert not panel.merge_button.isEnabled()
    assert "shape profile" in panel.blocker_label.text()
    panel.registry.remove("a")
    panel.live_plan.refresh_now()
    assert "a: no donor chosen yet" in panel.blocker_label.text()
    assert not panel.start_merge()


def test_engine_errors_are_shown_inline(panel, qtbot, tmp_path):
    # A donor folder that vanished after inspection: the engine reports it as a user error.
    import shutil

    shutil.rmtree(panel.registry.donors["b"].path)
    with qtbot.waitSignal(panel.runner.failed, timeout=60000) as failed:
        panel.start_merge()
    assert failed.args[0] and failed.args[0] in panel.result_label.text()
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_no_model_is_refused_and_a_model_folder_asked_for(panel, monkeypatch, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    asked = []
    for kind in ("question", "warning"):
        monkeypatch.setattr(QMessageBox, kind, lambda *args, k=kind: asked.append((k, args[2])) or
                            QMessageBox.StandardButton.Yes)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert not panel.start_merge()  # refused outright, even though every dialog would say yes
    assert asked[-1][0] == "warning" and "notes.txt" in asked[-1][1] and "not replaced" in asked[-1][1]
    (out / "notes.txt").unlink()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"")  # an earlier merge: an ordinary question
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(("question", args[2])) or
                        QMessageBox.StandardButton.No)
    assert not panel.start_merge()
    assert asked[-1][0] == "question" and "Replace it" in asked[-1][1]
    assert (out / "config.json").exists()


def test_the_folder_holding_the_recipe_is_never_replaced(panel, monkeypatch, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *args: warned.append(args[2]) or QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "question", lambda *args: pytest.fail("asked to replace the recipe's folder"))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("merge_method: passthrough\n")
    panel.document.mark_saved(recipe_file, recipe_file.read_text())
    panel.folder_edit.setText(str(tmp_path))
    assert not panel.start_merge()
    assert warned and "holds the recipe" in warned[-1]
    assert recipe_file.exists()


def test_cancelling_a_replacement_says_the_old_folder_is_kept(panel, qtbot, tmp_path, monkeypatch):
    from merger_gui.engine import run

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    (tmp_path / "out" / "model.safetensors").write_bytes(b"")
    panel.confirm_overwrite = lambda path, donors: True
    real_run_merge = run.run_merge

    def paused_run_merge(recipe, donors, out_dir, options, cancel):
        for event in real_run_merge(recipe, donors, out_dir, options, cancel):
            yield event
            if type(event).__name__ == "TensorProgress":
                cancel.wait(10)

    monkeypatch.setattr(run, "run_merge", paused_run_merge)
    panel.runner.progress.connect(lambda e: panel.cancel_merge() if type(e).__name__ == "TensorProgress" else None)
    with qtbot.waitSignal(panel.runner.cancelled, timeout=60000):
        panel.start_merge()
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    assert f"{tmp_path / 'out'} is as it was" in panel.stage_label.text()
    assert panel.progress_bar.value() == 0 and panel.open_button.isHidden()


def test_single_stage_log_reads_plainly(panel, qtbot):
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start_merge()
    log = panel.log.toPlainText()
    assert "stage 1/1" not in log and "merging " in log and "MiB" in log and "0.00 GiB" not in log


def test_a_donor_error_is_listed_once(panel):
    panel.registry.set_error("b", "/nowhere/b", "donor '/nowhere/b' not found (no such folder)")
    panel.live_plan.refresh_now()
    reasons = panel.blockers()
    assert sum("not found" in r for r in reasons) == 1 and reasons[0].startswith("b: ")


def test_suggested_folder_follows_the_recipe_until_the_user_picks_one(qtbot, tmp_path):
    from pathlib import Path

    document = RecipeDocument(passthrough())
    registry = DonorRegistry()
    widget = MergePanel(document, LivePlan(document, registry), registry)
    qtbot.addWidget(widget)
    assert widget.folder_edit.text() == str(Path.home() / "merged-model")
    document.load(passthrough(), tmp_path / "first.yaml")
    assert widget.folder_edit.text() == str(tmp_path / "first")
    document.load(passthrough(), tmp_path / "second.yaml")
    assert widget.folder_edit.text() == str(tmp_path / "second")  # not the previous recipe's folder
    widget.folder_edit.setText(str(tmp_path / "mine"))
    document.load(passthrough(), tmp_path / "third.yaml")
    assert widget.folder_edit.text() == str(tmp_path / "mine")


def test_without_a_recipe_file_the_output_goes_beside_the_local_donors(qtbot, make_donor):
    document = RecipeDocument(passthrough())
    registry = DonorRegistry()
    widget = MergePanel(document, LivePlan(document, registry), registry)
    qtbot.addWidget(widget)
    folder = make_donor("a", SHAPE, seed=1)
    registry.set_donor("a", str(folder), inspect_folder(folder))
    assert widget.folder_edit.text() == str(folder.parent / "merged-model")


def test_a_relative_output_folder_is_taken_from_the_recipe_folder(panel, tmp_path):
    panel.folder_edit.setText("merged/here")
    assert panel.output_folder() == Path.home() / "merged" / "here"  # an unsaved recipe: home
    panel.document.mark_saved(tmp_path / "recipes" / "mine.yaml", "")
    panel.folder_edit.setText("merged/here")
    assert panel.output_folder() == tmp_path / "recipes" / "merged" / "here"


def test_after_a_merge_the_result_follows_done_without_an_empty_row(panel, qtbot):
    panel.resize(600, 500)
    panel.show()
    qtbot.waitExposed(panel)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_merge()
    qtbot.waitUntil(lambda: panel.result_label.isVisible())
    assert panel.stage_label.text() == "Done" and panel.tensor_label.isHidden() and panel.eta_label.isHidden()
    done, result = panel.stage_label.geometry(), panel.result_label.geometry()
    assert result.top() - done.bottom() <= panel.layout().spacing() + 2  # the next row, not one further down
    panel.reset()
    assert panel.result_label.isHidden() and panel.stage_label.isHidden()
