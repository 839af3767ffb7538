"""The YAML text and the designer stay in step both ways, without echoes, keeping comments."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtGui import QTextCursor
from PySide6.QtTest import QTest

from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.slice_edits import resize_slice
from merger_gui.qt.document import RecipeDocument
from merger_gui.qt.yaml_editor import YamlEditor


@pytest.fixture
def rose(seed_recipe_path):
    return seed_recipe_path("rose-20b.yaml").read_text()


@pytest.fixture
def editor(qtbot, rose):
    document = RecipeDocument()
    widget = YamlEditor(document)
    qtbot.addWidget(widget)
    document.load(load_recipe_text(rose), None, rose)
    widget.show()
    return widget


def test_an_imported_file_shows_verbatim(editor, rose):
    assert editor.text() == rose


def test_designer_edits_rewrite_the_text_keeping_comments(editor):
    editor.document.apply_to_stage(lambda s: resize_slice(s, 0, end=20), "Resize")
    text = editor.text()
    assert "layer_range: [0, 20]" in text and "layer_range: [0, 16]" not in text
    assert text.startswith("# Rose-20B (from its model card)")
    editor.document.undo_stack.undo()
    assert "layer_range: [0, 16]" in editor.text()


def test_valid_typing_updates_the_designer_once(qtbot, editor):
    emitted = []
    editor.document.recipe_changed.connect(emitted.append)
    typed = editor.text().replace("[8, 24]", "[8, 26]") + "# my note\n"
    editor.editor.setPlainText(typed)
    with qtbot.waitSignal(editor.document.recipe_changed, timeout=3000):
        pass  # the typing pause elapses
    assert editor.document.stage.slices[1].sources[0].layer_range == (8, 26)
    assert len(emitted) == 1 and editor.document.undo_stack.count() == 1
    assert editor.text() == typed  # no echo: the user's text (and comment) stay as typed
    # A later designer edit keeps the comment typed in the editor.
    editor.document.apply_to_stage(lambda s: resize_slice(s, 0, end=12), "Resize")
    assert "# my note" in editor.text() and "layer_range: [0, 12]" in editor.text()
    editor.document.undo_stack.undo()
    editor.document.undo_stack.undo()
    assert editor.document.stage.slices[1].sources[0].layer_range == (8, 24)
    assert "[8, 24]" in editor.text()


def test_invalid_text_marks_its_line_and_keeps_the_designer(editor):
    before = editor.document.recipe
    lines = editor.text().splitlines()
    bad_line = next(i for i, line in enumerate(lines) if "[8, 24]" in line) + 1
    lines[bad_line - 1] = lines[bad_line - 1].replace("[8, 24]", "[8, twenty]")
    editor.editor.setPlainText("\n".join(lines) + "\n")
    editor.commit_text()
    assert editor.error is not None and editor.error_line == bad_line
    assert editor.error_label.isVisible() and f"Line {bad_line}" in editor.error_label.text()
    selections = editor.editor.extraSelections()
    assert len(selections) == 1 and selections[0].cursor.blockNumber() == bad_line - 1
    assert editor.document.recipe == before and editor.document.undo_stack.count() == 0
    editor.editor.setPlainText(editor.text().replace("twenty", "24"))
    editor.commit_text()
    assert editor.error is None and not editor.error_label.isVisible() and editor.editor.extraSelections() == []


def test_unparseable_yaml_reports_a_line(editor):
    editor.editor.setPlainText("merge_method: passthrough\nslices: [\n")
    editor.commit_text()
    assert editor.error is not None and editor.error_line is not None
    assert editor.document.undo_stack.count() == 0


def test_designer_edits_reach_the_text_after_the_edit(qtbot, editor):
    editor.document.apply_to_stage(lambda s: resize_slice(s, 0, end=20), "Resize")
    assert "layer_range: [0, 16]" in editor.editor.toPlainText()  # the edit itself does not wait for the text
    qtbot.waitUntil(lambda: "layer_range: [0, 20]" in editor.editor.toPlainText(), timeout=2000)


def test_a_hidden_editor_writes_the_text_when_shown(qtbot, editor):
    editor.hide()
    editor.document.apply_to_stage(lambda s: resize_slice(s, 0, end=20), "Resize")
    assert not editor._sync_timer.isActive() and "layer_range: [0, 16]" in editor.editor.toPlainText()
    editor.show()
    assert "layer_range: [0, 20]" in editor.editor.toPlainText()


def test_typing_starts_from_the_current_recipe(qtbot, editor):
    editor.document.apply_to_stage(lambda s: resize_slice(s, 0, end=20), "Resize")
    editor.editor.setFocus()
    editor.editor.moveCursor(QTextCursor.MoveOperation.End)
    QTest.keyClicks(editor.editor, "# note")
    assert "layer_range: [0, 20]" in editor.editor.toPlainText() and editor.editor.toPlainText().endswith("# note")
    editor.commit_text()
    assert editor.document.stage.slices[0].sources[0].layer_range == (0, 20)
