"""The MoE panel: an opened mergekit-moe recipe, donor picks and prompt edits as single undo steps."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, QThreadPool

from merger_gui.core.estimator import estimate_moe
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.moe_recipe import load_moe_text
from merger_gui.core.synthetic import DonorShape
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.moe_panel import MoePanel
from merger_gui.qt.settings import Settings

RECIPE = """\
base_model: {a}
gate_mode: cheap_embed
experts_per_token: 1
experts:
  - source_model: {a}
    positive_prompts: ["story"]
  - source_model: {b}
    positive_prompts: ["code", "python"]
    negative_prompts: ["poem"]
"""


@pytest.fixture
def moe_file(tmp_path, make_donor):
    shape = DonorShape(family="mistral")
    folders = {name: str(make_donor(name, shape, seed=i)) for i, name in enumerate("abc")}
    path = tmp_path / "moe.yml"
    path.write_text(RECIPE.format(**folders))
    return path, folders


def test_panel_edits_are_one_undo_step_each_and_save_as_mergekit_moe_yaml(qtbot, moe_file):
    path, folders = moe_file
    recipe = load_moe_text(path.read_text())
    donors = {name: inspect_folder(name) for name in folders.values()}
    panel = MoePanel()
    qtbot.addWidget(panel)
    panel.load(recipe, donors, path)
    moe = estimate_moe(recipe, donors[folders["a"]])
    params = panel.estimate_box.figure_labels["params"]
    assert f"{moe.total_params:,} total, {moe.active_params:,} active per token" in params.toolTip()
    assert "active per token (1 of 2 experts)" in params.text()
    assert "1 of 2 experts per token" in panel.summary.text()
    assert panel.experts[1].negative.toPlainText() == "poem"

    combo = panel.experts[0].donor
    combo.setCurrentIndex(combo.findText(folders["c"]))
    combo.activated.emit(combo.currentIndex())
    assert panel.recipe.experts[0].source_model == folders["c"] and panel.undo_stack.count() == 1

    panel.experts[1].positive.setPlainText("code\n\nrust")
    panel.experts[1].positive.editingFinished.emit()
    panel.experts[1].positive.editingFinished.emit()  # nothing changed since: no second step
    assert panel.recipe.experts[1].positive_prompts == ("code", "rust") and panel.undo_stack.count() == 2

    panel.undo_stack.undo()
    assert panel.experts[1].positive.prompts() == ("code", "python")
    panel.undo_stack.undo()
    assert panel.recipe == recipe and combo.currentText() == folders["a"]
    panel.undo_stack.redo()
    panel.save(path)
    assert load_moe_text(path.read_text()).experts[0].source_model == folders["c"]
    assert panel.undo_stack.isClean()


def test_opening_an_moe_recipe_shows_the_moe_panel(qtbot, tmp_path, moe_file):
    path, _folders = moe_file
    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    assert window.files.open_path(path, ask=False)
    assert window.pages.currentIndex() == 2 and window.moe_panel.recipe == load_moe_text(path.read_text())
    assert "active per token" in window.moe_panel.estimate_box.figure("params")
    window.close()
    assert window.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_the_window_undoes_saves_and_asks_for_the_page_shown(qtbot, tmp_path, moe_file, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    path, folders = moe_file
    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    window.show()
    assert window.files.open_path(path, ask=False)
    panel = window.moe_panel
    assert not any(a.isVisible() for a in window.stack_view.actions_.actions)  # no slice edits for experts
    panel.experts[0].positive.setPlainText("story\ntale")
    panel.experts[0].positive.editingFinished.emit()
    assert window.isWindowModified() and window.windowTitle().startswith(f"{path.name}[*]")
    window.undo_action.trigger()  # the window's Undo acts on the MoE page, not the hidden merge recipe
    assert panel.recipe.experts[0].positive_prompts == ("story",) and not window.isWindowModified()
    window.redo_action.trigger()

    asked: list[str] = []

    def cancel(_parent, _title, text, *_args):
        asked.append(text)
        return QMessageBox.StandardButton.Cancel

    monkeypatch.setattr(QMessageBox, "question", cancel)
    window.close()  # unsaved MoE edits: the user is asked, and Cancel keeps the window
    assert asked == [f"Save the changes to {path.name}?"] and window.isVisible()

    window.files.save.trigger()  # Save saves the MoE recipe shown, its comments kept
    assert load_moe_text(path.read_text()).experts[0].positive_prompts == ("story", "tale")
    assert not window.isWindowModified() and not window.document.is_modified

    window.show_designer()
    assert all(a.isVisible() for a in window.stack_view.actions_.actions)
    assert window.history.activeStack() is window.document.undo_stack
    window.close()
    assert window.inspector.wait(5000)


COMMENTED = """\
# a 2x MoE of tiny donors
base_model: {a}
gate_mode: cheap_embed   # no forward pass
experts_per_token: 1
experts:
  # the storyteller
  - source_model: {a}
    positive_prompts: ["story"]  # fiction only
  # the coder
  - source_model: {b}
    positive_prompts: ["code", "python"]
    negative_prompts: ["poem"]
"""


def _panel(qtbot, path, folders) -> MoePanel:
    panel = MoePanel()
    qtbot.addWidget(panel)
    panel.load(load_moe_text(path.read_text()), {name: inspect_folder(name) for name in folders.values()}, path)
    return panel


def test_saving_keeps_comments_and_an_unedited_recipe_byte_for_byte(qtbot, moe_file):
    path, folders = moe_file
    path.write_text(COMMENTED.format(**folders))
    original = path.read_text()
    panel = _panel(qtbot, path, folders)
    panel.save(path)
    assert path.read_text() == original

    panel.experts[0].positive.setPlainText("story\ntale")
    panel.experts[0].positive.editingFinished.emit()
    assert "unsaved changes" in panel.title.text()
    panel.save(path)
    saved = path.read_text()
    assert '    positive_prompts: ["story", "tale"]  # fiction only\n  # the coder\n' in saved
    assert saved.replace('["story", "tale"]', '["story"]') == original  # every other line as it was
    assert load_moe_text(saved) == panel.recipe and "unsaved" not in panel.title.text()

    panel.experts[1].negative.setPlainText("")
    panel.experts[1].negative.editingFinished.emit()
    panel.save(path)
    assert "negative_prompts" not in path.read_text() and "# a 2x MoE of tiny donors\n" in path.read_text()


def test_estimate_follows_the_context_and_each_edit(qtbot, moe_file):
    path, folders = moe_file
    panel = _panel(qtbot, path, folders)
    box = panel.estimate_box
    base = inspect_folder(folders["a"])
    kv_4k = box.estimate.estimate.kv_cache_bytes
    box.context_spin.setValue(8192)
    assert box.estimate.estimate.kv_cache_bytes == 2 * kv_4k and "8k tokens" in box.figure("kv")
    assert box.estimate == estimate_moe(panel.recipe, base, box.options())
    box.weights_combo.setCurrentText("Q8_0")
    assert "Q8_0" in box.figure("weights")
    total = box.estimate.total_params
    panel.apply(lambda r: replace(r, experts=r.experts + (r.experts[0],)), "a third expert")
    assert box.estimate.total_params > total and "of 3 experts" in box.figure("params")
    panel.undo_stack.undo()
    assert box.estimate.total_params == total


def test_merge_from_the_page_builds_the_moe(qtbot, moe_file, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path, folders = moe_file
    panel = _panel(qtbot, path, folders)
    merge = panel.merge_box
    assert merge.folder_edit.text() == str(tmp_path / "moe") and merge.merge_button.isEnabled()
    merge.folder_edit.setText("built")  # relative: beside the recipe
    with qtbot.waitSignal(merge.runner.finished, timeout=60000):
        assert merge.start_merge()
    config = json.loads((tmp_path / "built" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 2
    assert "The MoE is in" in merge.status_label.text() and merge.progress_bar.value() == 1000
    assert merge.runner.last_thread.isFinished()

    (tmp_path / "built" / "notes.txt").write_text("mine")  # no longer only a model: never replaced
    warned = []
    monkeypatch.setattr("merger_gui.qt.moe_merge.QMessageBox.warning", lambda *args: warned.append(args[2]))
    assert not merge.start_merge()
    assert "notes.txt" in warned[0] and not merge.runner.is_running


def test_cancel_during_the_gates_leaves_no_output(qtbot, moe_file, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from merger_gui.engine import moe

    path, folders = moe_file
    path.write_text(path.read_text().replace("cheap_embed", "hidden"))
    panel = _panel(qtbot, path, folders)
    merge = panel.merge_box
    real_run_moe = moe.run_moe

    def paused_run_moe(recipe, donors, out_dir, options, cancel):
        # Hold the engine after its first event (before the gates) until the GUI's cancel lands.
        for event in real_run_moe(recipe, donors, out_dir, options, cancel):
            yield event
            cancel.wait(10)

    monkeypatch.setattr(moe, "run_moe", paused_run_moe)
    loads = []
    monkeypatch.setattr(moe, "_load_base_model", loads.append)
    shown = []
    merge.runner.progress.connect(lambda e: (shown.append(merge.status_label.text()), merge.cancel_merge()))
    with qtbot.waitSignal(merge.runner.cancelled, timeout=60000):
        assert merge.start_merge()
    assert "base model reads each expert's prompts" in shown[0]
    assert "Cancelled" in merge.status_label.text() and merge.runner.last_thread.isFinished()
    assert not (tmp_path / "moe").exists() and not list(tmp_path.glob(".moe*"))
    assert loads == []  # stopped before transformers loaded the base


def test_cancel_while_the_base_loads_runs_no_forward_pass(qtbot, moe_file, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from merger_gui.engine import moe

    path, folders = moe_file
    path.write_text(path.read_text().replace("cheap_embed", "hidden"))
    merge = _panel(qtbot, path, folders).merge_box
    passes = []

    def loading_base(base):  # the user cancels while transformers loads the model
        merge.runner.cancel()
        return lambda **batch: passes.append(batch)  # a forward pass would be recorded (and fail)

    monkeypatch.setattr(moe, "_load_base_model", loading_base)
    with qtbot.waitSignal(merge.runner.cancelled, timeout=60000):
        assert merge.start_merge()
    assert passes == [] and not (tmp_path / "moe").exists()


def test_a_profile_donor_blocks_the_merge(qtbot, moe_file):
    from merger_gui.core.resolve import resolve_donor

    path, folders = moe_file
    recipe = load_moe_text(path.read_text())
    donors = {name: inspect_folder(name) for name in folders.values()}
    donors[folders["b"]] = resolve_donor("profile:mistral-7b", name=folders["b"])
    panel = MoePanel()
    qtbot.addWidget(panel)
    panel.load(recipe, donors, path, {folders["c"]: "donor 'c' not found"})
    assert not panel.merge_box.merge_button.isEnabled() and not panel.merge_box.start_merge()
    assert "fix the problems listed above" in panel.merge_box.blocker_label.text()  # shapes differ from the base
    assert "no local weights for " + folders["b"] in panel.merge_box.blocker_label.text()


def _window(qtbot, tmp_path) -> MainWindow:
    window = MainWindow(Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    return window


def _type_prompts(box, positive: str, negative: str = "") -> None:
    box.positive.setPlainText(positive)
    box.negative.setPlainText(negative)
    box.negative.editingFinished.emit()


def _add_from_menu(cards, name: str) -> None:
    cards.add_menu.aboutToShow.emit()
    next(a for a in cards.add_menu.actions() if a.text() == name).trigger()


def _new_moe_from_two_donors(qtbot, tmp_path, make_donor) -> tuple[MainWindow, list[str]]:
    """The designer knows two donors (named a and b, by folder); File › New MoE recipe starts from them."""
    window = _window(qtbot, tmp_path)
    refs = [str(make_donor(name, DonorShape(family="mistral"), seed=i)) for i, name in enumerate("ab")]
    for name, ref in zip("ab", refs):
        window.registry.set_donor(name, ref, inspect_folder(ref))
    assert window.files.new_moe.text() == "New &MoE recipe"
    window.files.new_moe.trigger()
    return window, refs


def test_a_new_moe_from_two_donors_is_authored_with_undo_and_saved_as(qtbot, tmp_path, make_donor, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from merger_gui.core.moe_edits import new_moe

    window, (a, b) = _new_moe_from_two_donors(qtbot, tmp_path, make_donor)
    panel = window.moe_panel
    assert window.pages.currentIndex() == 2 and panel.recipe == new_moe([a, b]) and panel.path is None
    assert "expert 1 has no positive_prompts (gate_mode hidden needs them)" in panel.problems.text()
    assert panel.settings_bar.base_combo.currentText() == a and not panel.merge_box.merge_button.isEnabled()
    _type_prompts(panel.experts[0], "story")
    _type_prompts(panel.experts[1], "code\npython", "poem")
    assert not panel.problems.isVisibleTo(panel) and panel.undo_stack.count() == 2

    _add_from_menu(panel.expert_cards, b)  # a third expert, from b again
    assert [e.source_model for e in panel.recipe.experts] == [a, b, b] and len(panel.experts) == 3
    _type_prompts(panel.experts[2], "math")
    panel.experts[2].move_left.click()
    assert [e.positive_prompts for e in panel.recipe.experts] == [("story",), ("math",), ("code", "python")]
    assert panel.experts[1].positive.prompts() == ("math",) and not panel.experts[0].move_left.isEnabled()
    panel.experts[0].remove.click()
    assert [e.positive_prompts for e in panel.recipe.experts] == [("math",), ("code", "python")]
    assert len(panel.experts) == 2 and panel.experts[0].title() == "Expert 1"
    window.undo_action.trigger()  # the remove
    window.undo_action.trigger()  # the move
    assert [e.positive_prompts for e in panel.recipe.experts] == [("story",), ("code", "python"), ("math",)]
    assert panel.experts[2].positive.prompts() == ("math",)
    window.redo_action.trigger()

    box = panel.estimate_box
    active = box.estimate.active_params
    panel.settings_bar.per_token_spin.setValue(1)
    assert box.estimate.active_params < active and "1 of 3 experts per token" in panel.summary.text()
    gate = panel.settings_bar.gate_combo
    _type_prompts(panel.experts[0], "")  # the moved math expert loses its prompts
    assert "expert 1 has no positive_prompts (gate_mode hidden needs them)" in panel.problems.text()
    gate.setCurrentText("random")
    gate.activated.emit(gate.currentIndex())
    assert panel.recipe.gate_mode == "random" and not panel.problems.isVisibleTo(panel)
    assert "prompts are not read" in panel.settings_bar.gate_help.text()
    assert box.estimate == estimate_moe(panel.recipe, inspect_folder(a), box.options())
    window.undo_action.trigger()
    assert gate.currentText() == "hidden" and panel.problems.isVisibleTo(panel)
    _type_prompts(panel.experts[0], "math")

    path = tmp_path / "authored"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args: (str(path), ""))
    window.files.save.trigger()  # a new recipe has no file yet: Save asks where, like Save As
    saved = tmp_path / "authored.yaml"
    assert load_moe_text(saved.read_text()) == panel.recipe and panel.path == saved
    assert not window.isWindowModified() and window.windowTitle().startswith("authored.yaml")
    window.close()
    assert window.inspector.wait(5000)


def test_an_empty_moe_from_the_start_page_gets_its_base_with_its_first_expert(qtbot, tmp_path, make_donor,
                                                                             monkeypatch):
    from PySide6.QtWidgets import QFileDialog, QMessageBox

    window = _window(qtbot, tmp_path)
    window.welcome.new_moe_button.click()
    panel = window.moe_panel
    assert window.pages.currentIndex() == 2 and panel.recipe.experts == () and not panel.recipe.base_model
    assert "choose a base model" in panel.problems.text() and "No experts yet" in panel.expert_cards.empty_label.text()
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *args: warned.append(args[2]))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args: (str(tmp_path / "empty.yaml"), ""))
    assert not window.files.save_as.trigger() and "add an expert first" in warned[0]
    assert not (tmp_path / "empty.yaml").exists()

    folder = str(make_donor("a", DonorShape(family="mistral")))
    panel.expert_cards.donor_requested.emit(folder)  # "Local folder…" in the add menu
    assert panel.recipe.base_model == folder and panel.recipe.experts[0].source_model == folder
    assert panel.undo_stack.count() == 1 and "active per token" in panel.estimate_box.figure("params")
    panel.shared_cards.donor_requested.emit("profile:no-such-profile")
    assert "no-such-profile" in warned[1] and panel.recipe.shared_experts == ()
    _add_from_menu(panel.shared_cards, folder)
    assert panel.recipe.shared_experts[0].source_model == folder and len(panel.shared_cards.boxes) == 1
    assert "Qwen MoE" in panel.problems.text()  # mergekit-moe needs the shared expert's prompts
    window.undo_action.trigger()
    window.undo_action.trigger()
    assert panel.recipe.experts == () and not panel.recipe.base_model
    window.close()


def test_a_recipe_built_in_the_app_merges_and_the_gate_bar_reaches_its_end(qtbot, tmp_path, make_donor):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from merger_gui.engine.events import GateProgress

    window, (a, b) = _new_moe_from_two_donors(qtbot, tmp_path, make_donor)
    panel = window.moe_panel
    _type_prompts(panel.experts[0], "story")
    _type_prompts(panel.experts[1], "code\npython", "poem")
    gate = panel.settings_bar.gate_combo
    gate.setCurrentText("cheap_embed")
    gate.activated.emit(gate.currentIndex())
    merge = panel.merge_box
    merge.folder_edit.setText(str(tmp_path / "built"))
    bars = []
    merge.runner.progress.connect(lambda e: isinstance(e, GateProgress) and bars.append(
        (merge.progress_bar.value(), merge.progress_bar.maximum(), merge.status_label.text())))
    with qtbot.waitSignal(merge.runner.finished, timeout=60000):
        assert merge.start_merge()
    assert [bar[:2] for bar in bars] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert bars[-1][2] == f"Computing the routers: 3 of 3 prompt batches read (expert 2: {b})"
    config = json.loads((tmp_path / "built" / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 2
    assert "The MoE is in" in merge.status_label.text()
    window.terminate()  # unsaved: close without asking
    assert merge.runner.last_thread.isFinished()
