"""The start page: seed recipes with their shape profiles, and the demo merge."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QThreadPool

from merger_gui.core.inspect import inspect_folder
from merger_gui.core.plan import plan_recipe
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.validation import validate_recipe
from merger_gui.qt.welcome import WelcomePage, seed_recipes


def test_seeds_list_every_donor_with_a_profile():
    seeds = {s.file: s for s in seed_recipes()}
    assert set(seeds) == {"rose-20b.yaml", "nyxene-11b.yaml"}
    assert seeds["rose-20b.yaml"].donors == {"Thorns-13B": "profile:llama-2-13b",
                                             "Noromaid-13B": "profile:llama-2-13b"}


@pytest.mark.parametrize("file, layers", [("rose-20b.yaml", 62), ("nyxene-11b.yaml", None)])
def test_open_seed_emits_recipe_text_and_refs(qtbot, tmp_path, file, layers):
    page = WelcomePage(demo_folder=tmp_path)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.open_recipe, timeout=2000) as opened:
        page.seed_buttons[file].click()
    recipe, text, refs = opened.args[0]
    assert text.startswith("#") and recipe.stages
    stage_names = set(recipe.stage_names())
    needed = {m for s in recipe.stages for m in s.referenced_models} - stage_names
    # Nyxene's last stage names a stage that does not exist (a real-world mistake the seed keeps).
    assert needed - set(refs) <= {"Starling-NeuralHermes-11B"}
    if layers:
        donors = {name: resolve_donor(ref) for name, ref in refs.items()}
        assert plan_recipe(recipe, donors).final.num_layers == layers


def test_demo_writes_donors_and_a_mergeable_recipe(qtbot, tmp_path):
    pool = QThreadPool()
    page = WelcomePage(demo_folder=tmp_path / "demo", pool=pool)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.open_recipe, timeout=60000) as opened:
        page.demo_button.click()
        assert not page.demo_button.isEnabled()
    pool.waitForDone()
    assert pool.activeThreadCount() == 0
    recipe, text, refs = opened.args[0]
    assert text is None and recipe.stages[0].merge_method == "slerp"
    donors = {name: inspect_folder(ref) for name, ref in refs.items()}
    assert not [f for f in validate_recipe(recipe, donors) if f.is_error]
    assert plan_recipe(recipe, donors).final.num_layers == 8
    assert page.demo_button.isEnabled()


def test_recent_recipes_and_start_buttons(qtbot, tmp_path):
    recipe = tmp_path / "my-merge.yaml"
    recipe.write_text("merge_method: passthrough\nslices: []\n")
    page = WelcomePage(demo_folder=tmp_path)
    qtbot.addWidget(page)
    page.set_recent_files([recipe, tmp_path / "deleted.yaml"])
    text = page.recent_label.text()
    assert "my-merge.yaml" in text and "deleted.yaml" not in text  # only files that still exist
    with qtbot.waitSignal(page.open_file, timeout=1000) as opened:
        page.recent_label.linkActivated.emit(str(recipe))
    assert opened.args == [recipe]
    with qtbot.waitSignal(page.new_recipe, timeout=1000):
        page.new_button.click()
    with qtbot.waitSignal(page.open_dialog, timeout=1000):
        page.open_button.click()
