"""New / Open / Save / Save As / recent files / paste: the recipe's life on disk.

Save and Save As act on the page shown: the merge recipe, or the mergekit-moe recipe of the MoE
page (``moe_panel`` while ``moe_shown``); unsaved changes of either are asked about before they
would be lost.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox, QWidget

from merger_gui.core.errors import RecipeError, UserError
from merger_gui.core.moe_edits import new_moe
from merger_gui.core.moe_recipe import is_moe_text, load_moe_text
from merger_gui.core.recipe import Recipe, Stage
from merger_gui.core.recipe_yaml import load_recipe_text, read_recipe_text, save_recipe

from .document import RecipeDocument
from .donor_registry import DonorRegistry
from .inspection import DonorInspector
from .moe_panel import MoePanel
from .settings import Settings
from .user_folders import documents_folder, is_inside_package, user_folder
from .yaml_editor import YamlEditor

YAML_FILTER = "Merge recipes (*.yaml *.yml);;All files (*)"


class RecipeFiles(QObject):
    """File actions for one window; prompts before unsaved changes are lost."""

    opened = Signal(object)  # Path | None
    moe_opened = Signal(object, object)  # MoeRecipe, Path: shown by the MoE panel, not the document
    moe_started = Signal()  # a new MoE recipe is on the MoE panel

    def __init__(self, window: QWidget, document: RecipeDocument, registry: DonorRegistry,
                 inspector: DonorInspector, yaml_editor: YamlEditor, settings: Settings, moe_panel: MoePanel) -> None:
        super().__init__(window)
        self.window, self.document, self.registry = window, document, registry
        self.inspector, self.yaml_editor, self.settings = inspector, yaml_editor, settings
        self.moe_panel = moe_panel
        self.moe_shown = False  # the window shows the MoE page: Save acts on its recipe
        self.new = self._action("&New", QKeySequence.StandardKey.New, self.new_recipe, "Start an empty recipe")
        self.new_moe = self._action("New &MoE recipe", QKeySequence(), self.new_moe_recipe,
                                    "Start a mergekit-moe recipe: your donors as its experts")
        self.open = self._action("&Open…", QKeySequence.StandardKey.Open, self.open_dialog, "Open a recipe file")
        self.save = self._action("&Save", QKeySequence.StandardKey.Save, self.save_recipe,
                                 "Save the recipe (comments of an imported file are kept)")
        self.save_as = self._action("Save &As…", QKeySequence.StandardKey.SaveAs, self.save_recipe_as,
                                    "Save the recipe under a new name")
        self.paste = self._action("&Paste recipe", QKeySequence("Ctrl+Shift+V"), self.paste_recipe,
                                  "Import recipe YAML from the clipboard")
        self.recent_menu = QMenu("Open &Recent", window)
        self.recent_menu.aboutToShow.connect(self._fill_recent)

    def _action(self, text: str, shortcut: QKeySequence | QKeySequence.StandardKey, slot: Callable[[], object],
                tip: str) -> QAction:
        action = QAction(text, self)
        action.setShortcut(shortcut)
        action.setStatusTip(tip)
        action.setToolTip(tip)
        action.triggered.connect(slot)
        return action

    # ---- opening --------------------------------------------------------------------------

    def maybe_save(self) -> bool:
        """Ask about unsaved changes (the MoE recipe's, then the merge recipe's); False means the user cancelled."""
        return self.maybe_save_moe() and self._maybe_save_document()

    def maybe_save_moe(self) -> bool:
        """Ask about the MoE page's unsaved edits; False means the user cancelled."""
        panel = self.moe_panel
        if not panel.is_modified:
            return True
        name = panel.path.name if panel.path else "the MoE recipe"
        answer = self._ask_to_save(name)
        if answer == QMessageBox.StandardButton.Save:
            return self._save_moe(panel.path)
        return answer == QMessageBox.StandardButton.Discard

    def _maybe_save_document(self) -> bool:
        if not self.document.is_modified:
            return True
        answer = self._ask_to_save(self.document.path.name if self.document.path else "the new recipe")
        if answer == QMessageBox.StandardButton.Save:
            return self._save_document()
        return answer == QMessageBox.StandardButton.Discard

    def _ask_to_save(self, name: str) -> QMessageBox.StandardButton:
        return QMessageBox.question(
            self.window, "Unsaved changes", f"Save the changes to {name}?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save)

    def new_recipe(self) -> bool:
        if not self.maybe_save():
            return False
        self.registry.clear()
        self.document.load(Recipe((Stage("passthrough", slices=()),)))
        self.opened.emit(None)
        return True

    def new_moe_recipe(self) -> bool:
        """Start a mergekit-moe recipe on the MoE page from the designer's donors (each an expert, the
        first the base), named by their reference so that the YAML resolves alike anywhere."""
        if not self.maybe_save_moe():
            return False
        donors = {self.registry.refs.get(name, name): info for name, info in self.registry.donors.items()}
        self.moe_panel.load(new_moe(list(donors)), donors)
        self.moe_started.emit()
        return True

    def open_dialog(self) -> bool:
        if not self.maybe_save():
            return False
        path, _ = QFileDialog.getOpenFileName(self.window, "Open recipe", str(self.recipe_folder()), YAML_FILTER)
        return bool(path) and self.open_path(Path(path), ask=False)

    def open_path(self, path: Path, overrides: dict[str, str] | None = None, *, ask: bool = True) -> bool:
        """Open a recipe file and inspect its donors (``overrides``: model name → reference;
        the donors chosen when it was last saved apply to the other models)."""
        if ask and not self.maybe_save():
            return False
        path = Path(path)
        try:
            text = read_recipe_text(path)  # a regular file of a sane size: never a FIFO or /dev/zero
            if is_moe_text(text):
                self.moe_opened.emit(load_moe_text(text), path)
                return True
            recipe = load_recipe_text(text)
        except (OSError, UnicodeDecodeError, UserError) as exc:
            QMessageBox.warning(self.window, "Cannot open recipe", f"{path.name}: {exc}")
            return False
        refs = {**self.settings.donor_refs(path), **(overrides or {})}
        self.settings.add_recent_file(path)
        self.settings.set_last_folder("recipe", path.parent)
        self.load(recipe, path, text, refs, path.parent)
        return True

    def open_recipe(self, payload: tuple[Recipe, str | None, dict[str, str]]) -> bool:
        """Open a recipe given as ``(recipe, source text, donor refs)`` (the start page's signal)."""
        if not self.maybe_save():
            return False
        recipe, text, refs = payload
        self.load(recipe, None, text, dict(refs), None)
        return True

    def paste_recipe(self) -> bool:
        text = QGuiApplication.clipboard().text()
        try:
            recipe = load_recipe_text(text)
        except UserError as exc:
            QMessageBox.warning(self.window, "Cannot paste recipe", f"The clipboard holds no recipe: {exc}")
            return False
        if not self.maybe_save():
            return False
        self.load(recipe, None, text, {}, None)
        return True

    def load(self, recipe: Recipe, path: Path | None, text: str | None, overrides: dict[str, str],
             base_dir: Path | None) -> None:
        self.registry.clear()
        self.document.load(recipe, path, text)
        self.inspector.inspect_recipe(recipe, overrides, base_dir)
        self.opened.emit(path)

    # ---- saving ---------------------------------------------------------------------------

    def recipe_folder(self) -> Path:
        """Where recipe dialogs start: the folder last used, else Documents; never the installed app."""
        return user_folder(self.settings.last_folder("recipe", documents_folder()))

    def save_path_suggestion(self) -> Path:
        """Where Save As starts: the recipe's own file, unless it is one shipped inside the app."""
        path = self.document.path
        if path is not None and not is_inside_package(path):
            return path
        return self.recipe_folder() / (path.name if path is not None else "recipe.yaml")

    def save_recipe(self) -> bool:
        """Save the recipe of the page shown under its name (asking for one when it has none)."""
        return self._save_moe(self.moe_panel.path) if self.moe_shown else self._save_document()

    def save_recipe_as(self) -> bool:
        """Save the recipe of the page shown under a name the user chooses."""
        return self._save_moe(None) if self.moe_shown else self._save_document_as()

    def _save_document(self) -> bool:
        if self.document.path is None or is_inside_package(self.document.path):
            return self._save_document_as()  # a seed recipe is saved as the user's own copy
        return self.write(self.document.path)

    def _save_document_as(self) -> bool:
        path = self._ask_save_path(self.save_path_suggestion())
        return path is not None and self.write(path)

    def _save_moe(self, path: Path | None) -> bool:
        """Write the MoE page's recipe to ``path`` (None: ask where)."""
        if self.moe_panel.recipe is None:
            return False
        path = path or self._ask_save_path(self.moe_panel.path or self.recipe_folder() / "moe.yaml")
        if path is None:
            return False
        try:
            self.moe_panel.save(path)
        except (OSError, RecipeError) as exc:
            QMessageBox.warning(self.window, "Cannot save recipe", f"{path}: {exc}")
            return False
        self.settings.add_recent_file(path)
        return True

    def _ask_save_path(self, start: Path) -> Path | None:
        chosen, _ = QFileDialog.getSaveFileName(self.window, "Save recipe", str(start), YAML_FILTER)
        if not chosen:
            return None
        path = Path(chosen)
        return path if path.suffix else path.with_suffix(".yaml")

    def write(self, path: Path) -> bool:
        """Write the recipe, editing the current text in place so comments survive; asks first
        when the YAML tab holds text that does not parse (that text cannot be saved)."""
        self.yaml_editor.commit_text()
        if self.yaml_editor.error is not None and not self._save_despite(self.yaml_editor.error):
            return False
        try:
            text = save_recipe(self.document.recipe, path, original_text=self.yaml_editor.base_text())
        except OSError as exc:
            QMessageBox.warning(self.window, "Cannot save recipe", f"{path}: {exc}")
            return False
        self.document.mark_saved(path, text)
        self.settings.add_recent_file(path)
        self.settings.set_last_folder("recipe", path.parent)
        # A model name is a donor only through the choice made here (a demo folder, a profile): keep it.
        self.settings.set_donor_refs(path, {name: ref for name, ref in self.registry.refs.items()
                                            if ref != name and name in self.registry.donors})
        return True

    def _save_despite(self, error: Exception) -> bool:
        answer = QMessageBox.warning(
            self.window, "The YAML has an error",
            f"The YAML tab does not parse: {error}\n\nSave the recipe as it was before that edit? "
            "The text with the error stays in the YAML tab, unsaved.",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Save

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = [p for p in self.settings.recent_files if p.exists()]
        for path in files:
            action = self.recent_menu.addAction(path.name, partial(self.open_path, path))
            action.setToolTip(str(path))
        if not files:
            self.recent_menu.addAction("No recent recipes").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self.settings.clear_recent_files)
