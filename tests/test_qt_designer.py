"""The stack designer, driven with real mouse events: create, resize, move, cancel, select, files."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QThreadPool, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox

from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import resolve_donor
from merger_gui.qt.main_window import MainWindow
from merger_gui.qt.settings import Settings
from merger_gui.qt.slice_items import CELL_LABEL_W

LLAMA_13B = "profile:llama-2-13b"


@pytest.fixture
def window(qtbot, tmp_path):
    settings = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    win = MainWindow(settings)  # closed below, after it is marked clean (no save prompt)
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


def load(win: MainWindow, recipe: Recipe, donors: dict[str, str], text: str | None = None) -> None:
    """Open ``recipe`` with donors resolved synchronously (model name → reference)."""
    win.registry.clear()
    win.document.load(recipe, None, text)
    for name, ref in donors.items():
        win.registry.set_donor(name, ref, resolve_donor(ref))
    win.live_plan.refresh_now()
    win.stack_view.rebuild()


def passthrough(*ranges: tuple[str, int, int]) -> Recipe:
    return Recipe((Stage("passthrough", slices=tuple(Slice((SliceSource(m, (s, e)),)) for m, s, e in ranges)),))


def ranges(win: MainWindow) -> list[tuple[str, tuple[int, int]]]:
    return [(s.sources[0].model, s.sources[0].layer_range) for s in win.document.stage.slices]


def cell_point(win: MainWindow, model: str, layer: float, x_offset: float = CELL_LABEL_W / 2) -> QPoint:
    view = win.stack_view
    column = view.columns[model]
    return view.mapFromScene(QPointF(column.x() + x_offset, view.geometry_.y(layer)))


def bar_point(win: MainWindow, slice_index: int, layer: float) -> QPoint:
    view = win.stack_view
    bar = view.slice_bar(slice_index)
    return view.mapFromScene(QPointF(bar.x() + bar.width / 2, view.geometry_.y(layer)))


def drag(win: MainWindow, start: QPoint, end: QPoint, steps: int = 6, cancel: bool = False) -> None:
    viewport = win.stack_view.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, steps + 1):
        QTest.mouseMove(viewport, start + (end - start) * (k / steps))
    if cancel:
        QTest.mousePress(viewport, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, end)
        QTest.mouseRelease(viewport, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, end)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def settle(qtbot, win: MainWindow) -> None:
    """Let the debounced plan catch up with the document."""
    qtbot.waitUntil(lambda: not win.live_plan.is_pending, timeout=3000)


def test_drag_over_donor_layers_creates_a_slice(qtbot, window):
    load(window, passthrough(), {"A": LLAMA_13B, "B": LLAMA_13B})
    assert set(window.stack_view.columns) == {"A", "B"}
    drag(window, cell_point(window, "A", 4.5), cell_point(window, "A", 9.5))
    assert ranges(window) == [("A", (4, 10))]
    assert window.document.undo_stack.count() == 1
    assert "layer_range: [4, 10]" in window.yaml_editor.text()
    settle(qtbot, window)
    assert window.live_plan.stage_plan(0).num_layers == 6
    assert window.document.selection == (0, 0)
    assert "6 layers" in window.summary_label.text()
    window.document.undo_stack.undo()
    assert ranges(window) == []
    window.document.undo_stack.redo()
    assert ranges(window) == [("A", (4, 10))]


def test_resize_by_the_bottom_edge_then_move_the_bar(qtbot, window):
    load(window, passthrough(("A", 0, 8), ("B", 8, 16)), {"A": LLAMA_13B, "B": LLAMA_13B})
    cell_h = window.stack_view.geometry_.cell_h
    edge = bar_point(window, 0, 8) - QPoint(0, 1)
    drag(window, edge, edge + QPoint(0, round(3 * cell_h)))
    assert ranges(window)[0] == ("A", (0, 11))
    assert window.document.undo_stack.count() == 1  # one step for the whole drag
    body = bar_point(window, 0, 5)
    drag(window, body, body + QPoint(0, round(2 * cell_h)), steps=10)
    assert ranges(window)[0] == ("A", (2, 13))
    assert window.document.undo_stack.count() == 2
    top = bar_point(window, 0, 2) + QPoint(0, 1)
    drag(window, top, top + QPoint(0, round(4 * cell_h)))
    assert ranges(window)[0] == ("A", (6, 13))
    assert "layer_range: [6, 13]" in window.yaml_editor.text()
    settle(qtbot, window)
    assert window.live_plan.stage_plan(0).num_layers == 7 + 8
    window.document.undo_stack.undo()
    window.document.undo_stack.undo()
    assert ranges(window)[0] == ("A", (0, 11))


def test_moving_is_clamped_to_the_donor(window):
    load(window, passthrough(("A", 30, 38)), {"A": LLAMA_13B})
    cell_h = window.stack_view.geometry_.cell_h
    body = bar_point(window, 0, 34)
    drag(window, body, body + QPoint(0, round(9 * cell_h)))
    assert ranges(window) == [("A", (32, 40))]


def test_right_click_during_a_drag_cancels_it(window):
    load(window, passthrough(("A", 0, 8)), {"A": LLAMA_13B})
    cell_h = window.stack_view.geometry_.cell_h
    body = bar_point(window, 0, 4)
    drag(window, body, body + QPoint(0, round(5 * cell_h)), cancel=True)
    assert ranges(window) == [("A", (0, 8))]
    assert window.document.undo_stack.count() == 0
    assert window.stack_view.slice_bar(0).range == (0, 8)
    drag(window, cell_point(window, "A", 20.5), cell_point(window, "A", 25.5), cancel=True)
    assert len(ranges(window)) == 1 and window.document.undo_stack.count() == 0


def test_delete_duplicate_and_reorder_the_selected_slice(window):
    load(window, passthrough(("A", 0, 8), ("B", 8, 16)), {"A": LLAMA_13B, "B": LLAMA_13B})
    QTest.mouseClick(window.stack_view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     bar_point(window, 1, 12))
    assert window.document.selection == (0, 1)
    assert window.stack_view.slice_bar(1).selected
    actions = window.stack_view.actions_
    actions.move_up.trigger()
    assert ranges(window) == [("B", (8, 16)), ("A", (0, 8))]
    assert window.document.selection == (0, 0)
    actions.duplicate.trigger()
    assert ranges(window) == [("B", (8, 16)), ("B", (8, 16)), ("A", (0, 8))]
    window.stack_view.setFocus()
    QTest.keyClick(window.stack_view, Qt.Key.Key_Delete)
    assert ranges(window) == [("B", (8, 16)), ("A", (0, 8))]
    assert window.document.undo_stack.count() == 3


def test_output_hover_highlights_the_source_and_click_selects(qtbot, window):
    load(window, passthrough(("A", 0, 16), ("B", 8, 24)), {"A": LLAMA_13B, "B": LLAMA_13B})
    view = window.stack_view
    output = view.output
    assert output is not None and output.num_layers == 32
    cell = output.mapRectToScene(output.cell_rect(20)).center()
    QTest.mouseMove(view.viewport(), view.mapFromScene(cell))
    qtbot.waitUntil(lambda: view.source_cell_highlighted("B", 12), timeout=2000)
    assert not view.source_cell_highlighted("A", 12)
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     view.mapFromScene(cell))
    assert window.document.selection == (0, 1)
    assert view.slice_bar(1).selected and not view.slice_bar(0).selected


def test_repeated_and_skipped_layers_and_seams(qtbot, window):
    load(window, passthrough(("A", 0, 10), ("A", 5, 15)), {"A": LLAMA_13B})
    column = window.stack_view.columns["A"]
    assert column.counts[0] == 1 and column.counts[7] == 2 and column.counts[20] == 0
    assert window.stack_view.output.layer_map.seams == (10,)
    assert window.stack_view.output.repeated[("A", 7)] == 2


def test_clicking_a_finding_selects_its_slice(qtbot, window):
    load(window, passthrough(("A", 0, 8), ("A", 30, 50)), {"A": LLAMA_13B})
    view = window.findings_view
    items = [view.topLevelItem(i) for i in range(view.topLevelItemCount())]
    target = next(i for i in items if "ends past" in i.text(0))
    rect = view.visualItemRect(target)
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    assert window.document.selection == (0, 1)
    assert window.stack_view.slice_bar(1).selected


def test_multi_stage_recipe_shows_a_tab_per_stage(qtbot, window, seed_recipe_path):
    path = seed_recipe_path("nyxene-11b.yaml")
    text = path.read_text()
    from merger_gui.core.recipe_yaml import load_recipe_text

    recipe = load_recipe_text(text)
    donors = {n: "profile:mistral-7b" for n in ("fblgit/una-cybertron-7b-v2", "chargoddard/loyal-piano-m7-cdpo",
                                                 "berkeley-nest/Starling-LM-7B-alpha",
                                                 "openaccess-ai-collective/DPOpenHermes-7B")}
    load(window, recipe, donors, text)
    bar = window.stage_bar
    assert bar.isVisible() and bar.count() == 3
    assert window.stack_view.output.num_layers == 48
    bar.setCurrentIndex(2)
    assert window.document.current_stage == 2
    columns = window.stack_view.columns
    assert columns["loyal-piano-cybertron-11B"].known  # an earlier stage's output is a donor here
    assert columns["loyal-piano-cybertron-11B"].num_layers == 48
    assert not columns["Starling-NeuralHermes-11B"].known  # the seed's misnamed stage
    assert window.live_plan.plan is None and window.live_plan.stage_plan(0) is not None


def test_donor_panel_flags_misfits_and_maps_missing_names(qtbot, window):
    load(window, passthrough(("A", 0, 8), ("X", 0, 4)),
         {"A": LLAMA_13B, "B": LLAMA_13B, "C": "profile:mistral-7b"})
    panel = window.donor_panel
    rows = {panel.tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole + 1): panel.tree.topLevelItem(i)
            for i in range(panel.tree.topLevelItemCount())}
    assert "Does not fit" in rows["C"].toolTip(0) and "hidden size 4096" in rows["C"].toolTip(0)
    assert "Does not fit" not in rows["A"].toolTip(0)
    assert rows["X"].text(1) == "not mapped" and panel.tree.itemWidget(rows["X"], 2) is not None
    assert rows["A"].text(2) == "24.2 GiB"  # sizes in GiB (2^30 bytes), as everywhere in the app
    assert panel.missing() == ["X"]
    with qtbot.waitSignal(window.inspector.busy_changed, timeout=10000, check_params_cb=lambda busy: not busy):
        panel.add_donor(LLAMA_13B, "X")
    assert window.registry.donor("X").num_layers == 40
    assert panel.missing() == []


def test_open_drop_save_keeps_comments(qtbot, window, tmp_path, seed_recipe_path, monkeypatch):
    source = tmp_path / "rose.yaml"
    source.write_text(seed_recipe_path("rose-20b.yaml").read_text())
    drop = QMimeData()
    drop.setUrls([QUrl.fromLocalFile(str(source))])
    event = QDropEvent(QPointF(400, 300), Qt.DropAction.CopyAction, drop, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert window.document.path == source
    assert window.yaml_editor.text() == source.read_text()
    qtbot.waitUntil(lambda: not window.inspector.is_busy, timeout=5000)
    assert set(window.registry.errors) == {"Thorns-13B", "Noromaid-13B"}  # no such folders or repos
    for name in ("Thorns-13B", "Noromaid-13B"):
        window.registry.set_donor(name, LLAMA_13B, resolve_donor(LLAMA_13B))
    window.live_plan.refresh_now()
    window.stack_view.rebuild()
    edge = bar_point(window, 0, 16) - QPoint(0, 1)
    drag(window, edge, edge + QPoint(0, round(2 * window.stack_view.geometry_.cell_h)))
    assert ranges(window)[0] == ("Thorns-13B", (0, 18))
    assert window.isWindowModified()
    out = tmp_path / "out.yaml"
    assert window.files.write(out)
    saved = out.read_text()
    assert saved.startswith("# Rose-20B (from its model card)") and "layer_range: [0, 18]" in saved
    assert not window.document.is_modified
    assert window.settings.recent_files[0] == out.resolve()
    # Unsaved changes are asked about before a new recipe replaces them.
    window.stack_view.actions_.delete.setEnabled(True)
    window.document.select_slice(0)
    window.stack_view.actions_.delete.trigger()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Cancel)
    assert not window.files.new_recipe() and len(ranges(window)) == 3
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    assert window.files.new_recipe() and ranges(window) == []


def test_paste_recipe_from_the_clipboard(qtbot, window):
    QGuiApplication.clipboard().setText("merge_method: passthrough\nslices:\n  - sources:\n"
                                        "      - model: profile-donor\n        layer_range: [2, 6]\n")
    assert window.files.paste_recipe()
    assert ranges(window) == [("profile-donor", (2, 6))]
    assert window.document.undo_stack.count() == 0


def test_donor_folders_are_inspected_off_the_gui_thread(qtbot, window, make_donor, tmp_path):
    folder_a, folder_b = make_donor("a"), make_donor("b", seed=1)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n"
                           "        layer_range: [0, 2]\n  - sources:\n      - model: b\n        layer_range: [1, 3]\n")
    assert window.files.open_path(recipe_file, ask=False)
    qtbot.waitUntil(lambda: not window.inspector.is_busy, timeout=10000)
    assert window.registry.refs["a"] == str(folder_a) and window.registry.donor("b").ref.endswith("b")
    assert folder_b.exists()
    settle(qtbot, window)
    assert window.live_plan.plan is not None and window.live_plan.plan.final.num_layers == 4
    folder_c = make_donor("c", seed=2)
    drop = QMimeData()
    drop.setUrls([QUrl.fromLocalFile(str(folder_c))])
    window.dropEvent(QDropEvent(QPointF(400, 300), Qt.DropAction.CopyAction, drop, Qt.MouseButton.NoButton,
                                Qt.KeyboardModifier.NoModifier))  # a folder dropped on the window is a donor
    qtbot.waitUntil(lambda: window.registry.donor(str(tmp_path / "c")) is not None, timeout=10000)
    assert window.inspector.wait(5000)


def test_dragging_an_80_layer_stack_stays_fast(qtbot, window, record_property):
    load(window, passthrough(("A", 0, 40), ("B", 40, 80)), {"A": "profile:llama-2-70b", "B": "profile:llama-2-70b"})
    view = window.stack_view
    viewport = view.viewport()
    cell_h = view.geometry_.cell_h
    start = bar_point(window, 0, 20)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    moves = 60
    began = time.perf_counter()
    for k in range(1, moves + 1):
        QTest.mouseMove(viewport, start + QPoint(0, round(k * cell_h * 30 / moves)))
        viewport.repaint()  # paint each step, as the event loop would
    per_move_ms = (time.perf_counter() - began) * 1000 / moves
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       start + QPoint(0, round(30 * cell_h)))
    record_property("ms_per_mouse_move", round(per_move_ms, 2))
    print(f"80-layer drag: {per_move_ms:.2f} ms per mouse move")
    assert ranges(window)[0] == ("A", (30, 70))
    assert window.document.undo_stack.count() == 1
    assert per_move_ms < 40


def test_settings_remember_window_layout_recent_files_and_theme(qtbot, tmp_path):
    ini = tmp_path / "remember.ini"
    settings = Settings(QSettings(str(ini), QSettings.Format.IniFormat))
    win = MainWindow(settings)
    win.resize(640, 480)  # inside the offscreen screen, so restoring does not clamp it
    win.show()
    qtbot.waitExposed(win)
    assert not win.donor_dock.isVisible()  # the start page has the window to itself
    win.show_designer()
    assert win.donor_dock.isVisible()
    win.findings_dock.hide()
    win.close()
    settings.theme = "dark"
    settings.add_recent_file(tmp_path / "a.yaml")
    settings.add_recent_file(tmp_path / "b.yaml")
    settings.add_recent_file(tmp_path / "a.yaml")
    settings.sync()
    again = Settings(QSettings(str(ini), QSettings.Format.IniFormat))
    assert again.theme == "dark"
    assert [p.name for p in again.recent_files] == ["a.yaml", "b.yaml"]
    restored = MainWindow(again)
    restored.show()
    qtbot.waitExposed(restored)
    restored.show_designer()
    assert restored.size().width() == 640 and not restored.findings_dock.isVisible()
    assert restored.donor_dock.isVisible()
    restored.close()
    restored.deleteLater()
    win.deleteLater()


def test_the_start_page_opens_a_seed_recipe(qtbot, tmp_path):
    win = MainWindow(Settings(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)))
    win.show()
    qtbot.waitExposed(win)
    assert win.pages.currentIndex() == 0
    button = next(b for name, b in win.welcome.seed_buttons.items() if "rose" in name)
    button.click()
    assert win.pages.currentIndex() == 1 and win.donor_dock.isVisible()
    qtbot.waitUntil(lambda: not win.inspector.is_busy and not win.live_plan.is_pending, timeout=10000)
    assert win.live_plan.plan is not None and win.live_plan.plan.final.num_layers == 62
    assert "62 layers · 19.99 B params" in win.summary_label.text()
    win.close()
    win.deleteLater()
    assert win.inspector.wait(5000)


def test_long_donor_names_wrap_in_two_lines_with_the_full_name_in_the_tooltip(qtbot, window):
    from PySide6.QtGui import QFontMetrics

    from merger_gui.qt.slice_items import header_fonts, title_lines

    metrics = QFontMetrics(header_fonts()[0])
    assert title_lines("Thorns-13B", metrics, 200) == ["Thorns-13B"]
    assert title_lines("Starling-DPOHermes-11B", metrics, 112) == ["Starling-", "DPOHermes-11B"]
    name = "berkeley-nest/Starling-LM-7B-alpha"
    load(window, passthrough((name, 0, 8)), {name: "profile:mistral-7b"})
    column = window.stack_view.columns[name]
    assert column.toolTip().startswith(f"{name}\nfrom profile:mistral-7b")
    assert all("…" not in line for line in title_lines(column.title, metrics, column.width))


def test_a_subtitle_that_only_just_fits_keeps_the_layer_count_rather_than_a_cut_family(qtbot, window):
    from PySide6.QtGui import QFontMetrics

    from merger_gui.qt.slice_items import header_fonts, subtitle_line

    metrics = QFontMetrics(header_fonts()[1])
    text = "8 layers · llama"
    exact = metrics.horizontalAdvance(text)  # Qt elides at this width, though the advance says it fits
    assert subtitle_line(text, metrics, exact + 20) == text
    assert subtitle_line(text, metrics, exact) == "8 layers"
    assert subtitle_line(text, metrics, 20).endswith("…")


def test_two_donors_of_one_profile_then_rename_one_everywhere(qtbot, window):
    load(window, passthrough(("A", 0, 8)), {"A": LLAMA_13B})
    panel = window.donor_panel
    with qtbot.waitSignal(window.inspector.busy_changed, timeout=10000, check_params_cb=lambda busy: not busy):
        first = panel.add_donor(LLAMA_13B)
    with qtbot.waitSignal(window.inspector.busy_changed, timeout=10000, check_params_cb=lambda busy: not busy):
        second = panel.add_donor(LLAMA_13B)
    assert (first, second) == ("llama-2-13b", "llama-2-13b-2")
    assert window.registry.donor(second).num_layers == 40

    assert panel.rename_donor("A", "Thorns-13B")
    assert ranges(window) == [("Thorns-13B", (0, 8))]
    assert window.registry.donor("Thorns-13B") is not None and window.registry.donor("A") is None
    assert not panel.rename_donor("Thorns-13B", "llama-2-13b")  # taken
    donor = window.registry.donor("Thorns-13B")
    window.document.undo_stack.undo()
    assert ranges(window) == [("A", (0, 8))]
    assert window.registry.donor("A") is donor and window.registry.refs["A"] == LLAMA_13B
    assert "Thorns-13B" not in window.registry.refs and panel.missing() == []
    window.document.undo_stack.redo()
    assert ranges(window) == [("Thorns-13B", (0, 8))]
    assert window.registry.donor("Thorns-13B") is donor and "A" not in window.registry.refs
    assert panel.missing() == [] and panel.tree.topLevelItem(0).text(0) == "Thorns-13B"


def test_yaml_that_does_not_parse_is_flagged_in_the_status_bar(window):
    window.yaml_editor.editor.setPlainText("merge_method: passthrough\nslices: [\n")
    window.yaml_editor.commit_text()
    label = window.findings_label
    assert label.text().startswith("YAML error at line ") and "not applied" in label.text()
    assert label.toolTip()
    window.yaml_editor.editor.setPlainText("merge_method: passthrough\nslices: []\n")
    window.yaml_editor.commit_text()
    assert "YAML error" not in label.text() and not label.toolTip()


def press_and_move(win: MainWindow, start: QPoint, end: QPoint, steps: int = 6) -> None:
    """The first half of :func:`drag`: the button stays down, so the view shows its preview."""
    viewport = win.stack_view.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for k in range(1, steps + 1):
        QTest.mouseMove(viewport, start + (end - start) * (k / steps))


def shown_ranges(win: MainWindow) -> list[tuple[int, int, tuple[int, int]]]:
    return sorted((b.slice_index, b.source_index, b.range) for b in win.stack_view.bars)


def stage_ranges(stage: Stage) -> list[tuple[int, int, tuple[int, int]]]:
    return sorted((si, ki, src.layer_range) for si, s in enumerate(stage.slices) for ki, src in enumerate(s.sources))


@pytest.mark.parametrize(("ranges_", "grip", "cells", "expected"), [
    ((("A", 0, 8), ("B", 4, 12)), "bottom", 3, [(0, 0, (0, 11)), (0, 1, (4, 15))]),
    ((("A", 4, 8), ("B", 0, 2)), "top", 3, [(0, 0, (7, 8)), (0, 1, (3, 4))]),  # B keeps one layer
    ((("A", 4, 12), ("B", 0, 8)), "body", 5, [(0, 0, (9, 17)), (0, 1, (0, 8))]),  # a move moves A alone
])
def test_a_drag_previews_exactly_what_its_release_commits(window, ranges_, grip, cells, expected):
    slerp = Stage("slerp", slices=(Slice(tuple(SliceSource(m, (a, b)) for m, a, b in ranges_)),), base_model="A")
    load(window, Recipe((slerp,)), {"A": LLAMA_13B, "B": LLAMA_13B})
    view, cell_h = window.stack_view, window.stack_view.geometry_.cell_h
    start, end = ranges_[0][1:]
    press = {"top": bar_point(window, 0, start) + QPoint(0, 1), "bottom": bar_point(window, 0, end) - QPoint(0, 1),
             "body": bar_point(window, 0, (start + end) / 2)}[grip]
    target = press + QPoint(0, round(cells * cell_h))
    press_and_move(window, press, target)
    preview = view.preview_stage
    assert preview is not None and window.document.stage == slerp  # nothing committed while dragging
    assert shown_ranges(window) == stage_ranges(preview) == expected
    QTest.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, target)
    assert window.document.stage == preview and window.document.undo_stack.count() == 1
    assert view.preview_stage is None and shown_ranges(window) == expected


def test_dragging_over_a_donor_previews_every_linked_source(window):
    load(window, Recipe((Stage("slerp", slices=(), base_model="A"),)), {"A": LLAMA_13B, "B": LLAMA_13B})
    view = window.stack_view
    press, target = cell_point(window, "A", 36.5), cell_point(window, "A", 39.5)
    press_and_move(window, press, target)
    ghosts = sorted((g.model, g.range) for g in view.ghosts)
    assert ghosts == [("A", (36, 40)), ("B", (36, 40))]
    preview = view.preview_stage
    QTest.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, target)
    assert window.document.stage == preview and view.ghosts == []
    assert [(s.model, s.layer_range) for s in window.document.stage.slices[0].sources] == ghosts


def test_output_hover_lists_every_rule_value_at_the_layer(qtbot, window):
    recipe = load_recipe_text("""\
slices:
  - sources:
      - {model: A, layer_range: [0, 16]}
      - {model: B, layer_range: [0, 16]}
merge_method: slerp
base_model: A
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - value: 0.25
""")
    load(window, recipe, {"A": LLAMA_13B, "B": LLAMA_13B})
    view = window.stack_view
    cell = view.output.mapRectToScene(view.output.cell_rect(15)).center()
    QTest.mouseMove(view.viewport(), view.mapFromScene(cell))
    qtbot.waitUntil(lambda: view.source_cell_highlighted("A", 15), timeout=2000)
    lines = view.output.toolTip().splitlines()
    assert lines[0] == "Output layer 15 ← A layer 15, B layer 15"
    assert "t (self_attn): 1" in lines and "t (fallback): 0.25" in lines
