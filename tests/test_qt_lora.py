"""MODEL+LORA donors in the window: the donor list and the designer's column mark them, a donor gets
an adapter (one undo step, the recipe naming it ``MODEL+ADAPTER`` as mergekit reads it), and a bad
adapter is refused in one line."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("torch")

from PySide6.QtCore import QSettings, Qt, QThreadPool

from merger_gui.core.lora_config import split_lora_reference
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text
from merger_gui.core.resolve import resolve_donor, resolve_recipe_donors
from merger_gui.qt.lora_dialog import LoraDonorDialog
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from test_lora import adapter

NAME_ROLE = Qt.ItemDataRole.UserRole + 1


@pytest.fixture
def window(qtbot, tmp_path):
    settings = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    win = MainWindow(settings)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    win.show_designer()
    yield win
    win.document.undo_stack.setClean()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def load(win: MainWindow, model: str, ref: str) -> None:
    """A passthrough of donor ``model`` (resolved from ``ref``), shown."""
    win.registry.clear()
    win.document.load(Recipe((Stage("passthrough", slices=(Slice((SliceSource(model, (0, 4)),)),)),)))
    win.registry.set_donor(model, ref, resolve_donor(ref))
    win.live_plan.refresh_now()
    win.stack_view.rebuild()


def row(win: MainWindow, name: str):
    tree = win.donor_panel.tree
    items = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount())]
    return next(item for item in items if item is not None and item.data(0, NAME_ROLE) == name)


def idle(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: not win.inspector.is_busy, timeout=10000)


def test_a_lora_donor_is_marked_in_the_list_and_its_column(window, make_donor, tmp_path):
    model, lora = make_donor("m"), adapter(tmp_path / "lora", {"lora_alpha": 8, "use_rslora": True,
                                                               "target_modules": ["v_proj", "q_proj"]})
    name = f"{model}+{lora}"
    load(window, name, name)
    item = row(window, name)
    assert item.text(0) == "m" and item.childCount() == 1
    mark = item.child(0)
    assert mark.text(0) == "+ LoRA r=2 · lora"
    tip = mark.toolTip(0)
    assert f"LoRA adapter: {lora}" in tip and "r=2, lora_alpha=8, rsLoRA yes → scaling 5.65685" in tip
    assert "targets: q_proj, v_proj" in tip and "like mergekit" in tip and tip in item.toolTip(0)
    column = window.stack_view.columns[name]
    assert column.title == "m +LoRA" and "r=2, lora_alpha=8" in column.toolTip()

    load(window, "plain", str(model))
    assert row(window, "plain").childCount() == 0 and window.stack_view.columns["plain"].title == "plain"


def test_attaching_an_adapter_renames_the_donor_as_mergekit_reads_it(qtbot, window, make_donor, tmp_path):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    load(window, str(model), str(model))
    panel = window.donor_panel
    name = panel.set_adapter(str(model), str(lora))
    idle(qtbot, window)
    assert name == f"{model}+{lora}" and window.registry.donor(name).adapter == str(lora)
    text = dump_recipe(window.document.recipe)
    assert f"model: {model}+{lora}" in text
    recipe = load_recipe_text(text)  # the YAML resolves (here and in mergekit) to the model with its adapter
    assert split_lora_reference(recipe.stages[0].slices[0].sources[0].model) == (str(model), str(lora))
    assert resolve_recipe_donors(recipe, {})[0][name].adapter == str(lora)
    assert row(window, name).child(0).text(0).startswith("+ LoRA r=2")

    window.document.undo_stack.undo()
    assert window.registry.donor(str(model)).adapter is None and name not in window.registry.refs
    assert window.document.recipe.stages[0].slices[0].sources[0].model == str(model)
    window.document.undo_stack.redo()
    idle(qtbot, window)
    assert window.registry.donor(name).adapter == str(lora)
    assert panel.set_adapter(name, None) == str(model)  # detached: the plain model again
    idle(qtbot, window)
    assert window.registry.donor(str(model)).adapter is None


def test_add_donor_with_adapter_and_a_misfit_in_one_line(qtbot, window, make_donor, tmp_path):
    model = make_donor("m")
    misfit = adapter(tmp_path / "wide", modules={"model.layers.0.self_attn.q_proj": (128, 128)})
    name = window.donor_panel.add_with_adapter(str(model), str(misfit))
    idle(qtbot, window)
    assert name == f"{model}+{misfit}" and window.registry.donor(name) is None
    error = window.registry.errors[name]
    assert "an adapter for another model size" in error and "\n" not in error
    reason = row(window, name).child(0)
    assert "an adapter for another model size" in reason.text(0) and "Traceback" not in reason.toolTip(0)


def test_the_dialog_refuses_what_is_no_adapter_inline(qtbot, make_donor, tmp_path):
    lora = adapter(tmp_path / "lora")
    broken = adapter(tmp_path / "dora", {"use_dora": True})
    dialog = LoraDonorDialog(str(make_donor("m")))
    qtbot.addWidget(dialog)
    assert dialog.model_edit.isReadOnly()
    for text, message in ((str(tmp_path), "has no adapter_config.json"), (str(broken), "uses use_dora"),
                          ("not a repo", "not a folder, not an org/name Hub repo id"), ("", "choose the LoRA")):
        dialog.adapter_edit.setText(text)
        dialog.accept()
        assert dialog.result() == 0 and message in dialog.error_label.text()
        assert "\n" not in dialog.error_label.text()
    dialog.adapter_edit.setText(str(lora))
    dialog.accept()
    assert dialog.result() == dialog.DialogCode.Accepted
    dialog.adapter_edit.setText("org/some-lora@v2")  # a Hub adapter: checked when resolved
    assert dialog.problem() is None
