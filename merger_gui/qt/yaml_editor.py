"""The recipe as YAML text, always in step with the designer, in both directions.

Designer edits rewrite the text through :func:`dump_recipe` (editing the current text in
place, so comments survive), shortly after the edit and only while the editor is shown: at
hundreds of layers a rewrite takes longer than the designer needs to settle. Valid typing
updates the designer as one undo step after a short pause; invalid text marks the offending
line and leaves the designer as it was.
"""

from __future__ import annotations

import re

import sys

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor, QFontDatabase, QKeyEvent, QKeySequence, QShowEvent, QSyntaxHighlighter, QTextCharFormat, QTextCursor,
    QTextDocument, QTextFormat,
)
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QTextEdit, QVBoxLayout, QWidget

from merger_gui.core.errors import RecipeError
from merger_gui.core.recipe import Recipe
from merger_gui.core.recipe_yaml import dump_recipe, load_recipe_text

from .document import RecipeDocument
from .theme import current_theme

TYPING_PAUSE_MS = 400
SYNC_DELAY_MS = 120  # a designer edit reaches the text after the designer has painted it


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
        self._stale = False  # the recipe changed since the text was written
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(SYNC_DELAY_MS)
        self._sync_timer.timeout.connect(self.sync_now)
        self.editor.textChanged.connect(self._on_text_changed)
        self.editor.installEventFilter(self)  # Ctrl+Z: the recipe's undo unless typing is pending
        document.recipe_changed.connect(self._on_recipe_changed)
        self._on_recipe_changed(document.recipe)
        self.sync_now()

    @property
    def has_pending_change(self) -> bool:
        """Typing not applied to the recipe yet (waiting for the pause, or not parsing)."""
        return self._timer.isActive() or self.error is not None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Undo and redo keys in the editor undo the recipe edit, unless the editor has its own
        pending change (then they undo its typing, as in any text field)."""
        if watched is self.editor and event.type() in _BEFORE_INPUT:
            self.sync_now()  # the user edits the recipe as it is, never a text about to be replaced
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
        """The recipe's text, with any designer edit not yet written brought in first."""
        self.sync_now()
        return self.editor.toPlainText()

    def base_text(self) -> str | None:
        """The text to edit in place when writing the recipe (keeps the user's comments)."""
        self.sync_now()
        return self._base_text()

    def _base_text(self) -> str | None:
        return self._valid_text if self._valid_text is not None else self.document.source_text

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.sync_now()

    def _on_recipe_changed(self, _recipe: Recipe) -> None:
        if self._applying:
            return  # the change came from this editor: its text already says it
        if self.document.undo_stack.count() == 0:  # a newly opened or new document
            self._valid_text = self.document.source_text
        self._stale = True
        if self.has_pending_change:
            self.sync_now()  # the designer's edit replaces the typing at once, as it always has
        elif self.isVisible():
            self._sync_timer.start()

    def sync_now(self) -> None:
        """Write the recipe into the text now, if a designer edit has not reached it yet."""
        self._sync_timer.stop()
        if not self._stale:
            return
        self._stale = False
        text = dump_recipe(self.document.recipe, original_text=self._base_text())
        self._valid_text = text
        self._show_error(None)
        if text != self.editor.toPlainText():
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
            self._stale = False  # the user's text replaces a rewrite still to come
            self._sync_timer.stop()
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


_BEFORE_INPUT = frozenset((QEvent.Type.KeyPress, QEvent.Type.FocusIn, QEvent.Type.InputMethod))


def _is_ctrl_y(event: QKeyEvent) -> bool:
    """Ctrl+Y, redo where the platform uses it (not macOS)."""
    return sys.platform != "darwin" and event.key() == Qt.Key.Key_Y \
        and event.modifiers() == Qt.KeyboardModifier.ControlModifier
