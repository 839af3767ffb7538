"""The estimate panel: figures of the live plan, following recipe edits and option changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("pytestqt")

from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.donor_registry import DonorRegistry
from merger_gui.qt.estimate_panel import EstimatePanel
from merger_gui.qt.live_plan import LivePlan


@pytest.fixture
def rose(qtbot, seed_recipe_path):
    text = seed_recipe_path("rose-20b.yaml").read_text()
    document = RecipeDocument()
    document.load(load_recipe_text(text), source_text=text)
    registry = DonorRegistry()
    live_plan = LivePlan(document, registry)
    panel = EstimatePanel(document, live_plan, registry)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.estimate_changed, timeout=5000, check_params_cb=lambda e: e is not None):
        for name in ("Thorns-13B", "Noromaid-13B"):
            registry.set_donor(name, "profile:llama-2-13b", load_profile("llama-2-13b"))
    return document, panel


def test_rose_figures_match_the_published_counts(rose):
    _, panel = rose
    assert panel.figure("params").startswith("19,994,362,880")
    assert panel.figure("layers") == "62"
    final = panel.estimate.final
    # Llama-2-13B: 800 KiB of f16 KV cache per token per 40 layers -> 1,240 KiB for 62 layers.
    assert final.kv.bytes_per_token == 1240 * 1024
    assert "4.84 GiB at 4k" in panel.figure("kv")
    assert "vs Thorns-13B at 4k" in panel.donor_label.text()


def test_panel_follows_a_slice_edit(rose, qtbot):
    document, panel = rose
    drop_last = lambda stage: replace(stage, slices=stage.slices[:-1])  # noqa: E731
    with qtbot.waitSignal(panel.estimate_changed, timeout=5000):
        document.apply_to_stage(drop_last, "Remove slice")
    assert panel.figure("layers") == "47"  # 62 - 15
    assert panel.estimate.final.params < 19_994_362_880
    assert panel.memory_curve.yData is not None and len(panel.memory_curve.yData) > 10


def test_options_change_weights_and_max_context(rose, qtbot):
    _, panel = rose
    fp16_total = panel.estimate.final.total_bytes
    with qtbot.waitSignal(panel.estimate_changed, timeout=5000):
        panel.weights_combo.setCurrentText("Q4_K_M")
    assert panel.estimate.final.total_bytes < fp16_total / 2
    assert "Q4_K_M" in panel.figure("weights")
    before = panel.estimate.final.max_context
    with qtbot.waitSignal(panel.estimate_changed, timeout=5000):
        panel.gpu_spin.setValue(48.0)
    assert panel.estimate.final.max_context > before
    assert panel.budget_line.value() == pytest.approx(48.0)
    assert panel.estimate.final.trained_context == 4096  # Llama-2's
    assert "(the model is trained for 4,096)" in panel.figure("max_context")  # 48 GiB holds more
