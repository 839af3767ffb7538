"""The recipe as YAML text, always in step with the designer, in both directions.

Designer edits rewrite the text through :func:`dump_recipe` (editing the current text in
place, so comments survive); valid typing updates the designer as one undo step after a
short pause; invalid text marks the offending line and leaves the designer as it was.
"""

from __future__ import annotations

import re

import sys

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor, QFontDatabase, QKeyEvent, QKeySequence, QSyntaxHighlighter, QTextCharFormat, QTextCursor, QTextDocument,
    QTextFormat,
)
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QTextEdit, QVBoxLayout, QWidget

from merger_gui.core.errors import RecipeError
from merger_gui.core.recipe import Recipe
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text

from .document import RecipeDocument
from .theme import current_theme

TYPING_PAUSE_MS = 400


class YamlHighlighter(QSyntaxHighlighter):
    """Keys, comments, numbers and document separators in distinct colours."""

    RULES = (
        (re.compile(r"^\s*(?:- )?([\w.-]+)(?=\s*:)"), "key"),
        (re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])"), "number"),
        (re.compile(r"^---\s*$"), "separator"),
        (re.compile(r"(?:^|\s)#.*$"), "comment"),
    )

    def __init__(self, document: QTextDocument) -> None:
        super().__init__(document)
        self.formats: dict[str, QTextCharFormat] = {}
        self.apply_theme()

    def apply_theme(self) -> None:
        """Take the current theme's colours (keys in dark blue are unreadable on a dark background)."""
        dark = current_theme().is_dark
        palette = {
            "key": "#7cb7ff" if dark else "#1d4ed8",
            "number": "#f0a35e" if dark else "#b45309",
            "separator": "#c084fc" if dark else "#7e22ce",
            "comment": "#7f8b96" if dark else "#6b7280",
        }
        self.formats = {}
        for name, color in palette.items():
            fmt = QTextCharFormat()
            fmt.setForeground(QColor(color))
            if name == "comment":
                fmt.setFontItalic(True)
            self.formats[name] = fmt
        self.rehighlight()

    def highlightBlock(self, text: str) -> None:
        for pattern, name in self.RULES:
            for match in pattern.finditer(text):
                group = 1 if pattern.groups else 0
                self.setFormat(match.start(group), match.end(group) - match.start(group), self.formats[name])


class YamlEditor(QWidget):
    """A YAML text editor bound to the document."""

    error_changed = Signal(object)  # RecipeError | None

    def __init__(self, document: RecipeDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.editor = QPlainTextEdit(self)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setPointSize(max(9, font.pointSize()))
        self.editor.setFont(font)
        self.editor.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.editor.setTabStopDistance(self.editor.fontMetrics().horizontalAdvance(" ") * 2)
        self.editor.setToolTip("The recipe in mergekit's YAML; edits here update the designer")
        self.highlighter = YamlHighlighter(self.editor.document())
        self.error_label = QLabel(self)
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet("QLabel { color: #dc2626; padding: 4px 2px; }")
        self.error_label.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.editor)
        layout.addWidget(self.error_label)
        self.error: RecipeError | None = None
        self._valid_text: str | None = None  # last text that parsed (the base that keeps comments)
        self._setting = False
        self._applying = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(TYPING_PAUSE_MS)
        self._timer.timeout.connect(self.commit_text)
        self.editor.textChanged.connect(self._on_text_changed)
        self.editor.installEventFilter(self)  # Ctrl+Z: the recipe's undo unless typing is pending
        document.recipe_changed.connect(self._on_recipe_changed)
        self._on_recipe_changed(document.recipe)

    @property
    def has_pending_change(self) -> bool:
        """Typing not applied to the recipe yet (waiting for the pause, or not parsing)."""
        return self._timer.isActive() or self.error is not None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Undo and redo keys in the editor undo the recipe edit, unless the editor has its own
        pending change (then they undo its typing, as in any text field)."""
        if watched is self.editor and isinstance(event, QKeyEvent) and event.type() == QEvent.Type.KeyPress \
                and not self.has_pending_change:
            stack = self.document.undo_stack
            if event.matches(QKeySequence.StandardKey.Undo):
                stack.undo()
                return True
            if event.matches(QKeySequence.StandardKey.Redo) or _is_ctrl_y(event):
                stack.redo()
                return True
        return super().eventFilter(watched, event)

    @property
    def error_line(self) -> int | None:
        return self.error.line if self.error else None

    def text(self) -> str:
        return self.editor.toPlainText()

    def base_text(self) -> str | None:
        """The text to edit in place when writing the recipe (keeps the user's comments)."""
        return self._valid_text if self._valid_text is not None else self.document.source_text

    def _on_recipe_changed(self, recipe: Recipe) -> None:
        if self._applying:
            return  # the change came from this editor: its text already says it
        if self.document.undo_stack.count() == 0:  # a newly opened or new document
            self._valid_text = self.document.source_text
        text = dump_recipe(recipe, original_text=self.base_text())
        self._valid_text = text
        self._show_error(None)
        if text != self.text():
            self._set_text(text)

    def _set_text(self, text: str) -> None:
        bar = self.editor.verticalScrollBar()
        scroll, position = bar.value(), self.editor.textCursor().position()
        self._setting = True
        self.editor.setPlainText(text)
        self._setting = False
        cursor = self.editor.textCursor()
        cursor.setPosition(min(position, len(text)))
        self.editor.setTextCursor(cursor)
        bar.setValue(scroll)

    def _on_text_changed(self) -> None:
        if not self._setting:
            self._timer.start()

    def commit_text(self) -> None:
        """Parse the text now; a valid change becomes one undo step, an error marks its line."""
        self._timer.stop()
        text = self.text()
        try:
            recipe = load_recipe_text(text)
        except RecipeError as exc:
            self._show_error(exc)
            return
        self._show_error(None)
        self._valid_text = text
        if recipe != self.document.recipe:
            self._applying = True
            try:
                self.document.apply(recipe, "Edit YAML")
            finally:
                self._applying = False

    def _show_error(self, error: RecipeError | None) -> None:
        self.error = error
        selections = []
        if error is not None:
            line = error.line
            self.error_label.setText(f"Line {line}: {error.bare_message}" if line else str(error))
            self.error_label.show()
            if line:
                selection = QTextEdit.ExtraSelection()
                selection.format.setBackground(QColor(220, 38, 38, 60))
                selection.format.setProperty(QTextFormat.Property.FullWidthSelection, True)
                block = self.editor.document().findBlockByLineNumber(line - 1)
                selection.cursor = QTextCursor(block)
                selections.append(selection)
        else:
            self.error_label.hide()
        self.editor.setExtraSelections(selections)
        self.error_changed.emit(error)


def _is_ctrl_y(event: QKeyEvent) -> bool:
    """Ctrl+Y, redo where the platform uses it (not macOS)."""
    return sys.platform != "darwin" and event.key() == Qt.Key.Key_Y \
        and event.modifiers() == Qt.KeyboardModifier.ControlModifier
