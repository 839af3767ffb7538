"""The main window: composes the designer's widgets, menus, toolbar and docks."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import (
    QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QResizeEvent, QShowEvent,
    QUndoGroup, QUndoStack,
)
from PySide6.QtWidgets import (
    QApplication, QDockWidget, QFrame, QLabel, QMainWindow, QMessageBox, QScrollArea, QStackedWidget, QTabWidget,
    QToolBar, QVBoxLayout, QWidget,
)

from merger_gui.core.errors import RecipeError
from merger_gui.core.moe_recipe import MoeRecipe, resolve_moe_donors

from .analysis_panel import AnalysisPanel
from .check_panel import CheckPanel
from .curve_editor import TCurveEditor
from .document import RecipeDocument
from .donor_panel import DonorPanel
from .donor_registry import DonorRegistry
from .estimate_panel import EstimatePanel
from .findings_view import FindingsView
from .inspection import DonorInspector
from .live_plan import LivePlan
from .merge_panel import MergePanel
from .moe_panel import MoePanel
from .output_stack import plan_summary
from .recipe_files import RecipeFiles
from .settings import Settings
from .slice_inspector import SliceInspector
from .stack_view import StackView, StageBar
from .stage_actions import StageActions
from .stage_settings import StageSettingsBar
from .theme import apply_theme
from .welcome import WelcomePage, seed_recipes
from .yaml_editor import YamlEditor

APP_TITLE = "Merger GUI"
RECIPE_SUFFIXES = (".yaml", ".yml")
COMPACT_WIDTH = 1200  # narrower, the donor list becomes a tab beside the recipe tools: the stacks keep their room


def redo_shortcuts() -> list[QKeySequence]:
    """The platform's redo keys, and Ctrl+Y where that is the usual one too (not on macOS)."""
    keys = QKeySequence.keyBindings(QKeySequence.StandardKey.Redo)
    ctrl_y = QKeySequence("Ctrl+Y")
    if sys.platform != "darwin" and ctrl_y not in keys:
        keys.append(ctrl_y)
    return keys


def _scrolling(widget: QWidget) -> QScrollArea:
    """Let a panel with a large minimum size shrink with the window (it scrolls instead)."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


class UndoButtonAction(QAction):
    """Undo or redo under a fixed label, so the toolbar does not shift with "Undo <what>" as the
    menu's action does; the tooltip says what it would undo."""

    def __init__(self, stack: QUndoStack | QUndoGroup, redo: bool, parent: QWidget) -> None:
        super().__init__("Redo" if redo else "Undo", parent)
        self._verb = self.text()
        self.triggered.connect(stack.redo if redo else stack.undo)
        (stack.canRedoChanged if redo else stack.canUndoChanged).connect(self.setEnabled)
        (stack.redoTextChanged if redo else stack.undoTextChanged).connect(self.describe)
        self.setEnabled(stack.canRedo() if redo else stack.canUndo())
        self.describe(stack.redoText() if redo else stack.undoText())

    def describe(self, what: str) -> None:
        self.setToolTip(f"{self._verb} {what}" if what else self._verb)


class MainWindow(QMainWindow):
    """Donors on the left, the stack designer in the middle, recipe tools on the right."""

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._terminating = False  # closing because the process was told to stop: no save prompt
        self.settings = settings or Settings()
        self.document = RecipeDocument(parent=self)
        self.registry = DonorRegistry(self)
        self.inspector = DonorInspector(self.registry, self)
        self.live_plan = LivePlan(self.document, self.registry, self)

        self.stage_bar = StageBar(self.document)
        self.stage_actions = StageActions(self.document, self, self)
        self.stage_bar.menu_actions = self.stage_actions.actions
        self.stage_settings = StageSettingsBar(self.document, self.registry, self.live_plan)
        self.stack_view = StackView(self.document, self.live_plan, self.registry)
        self.slice_inspector = SliceInspector(self.document, self.stack_view)
        self.yaml_editor = YamlEditor(self.document)
        self.findings_view = FindingsView(self.document, self.live_plan, self.registry)
        self.donor_panel = DonorPanel(self.document, self.registry, self.inspector, self.live_plan, self.settings)
        self.curve_editor = TCurveEditor(self.document, self.live_plan)
        self.estimate_panel = EstimatePanel(self.document, self.live_plan, self.registry)
        self.merge_panel = MergePanel(self.document, self.live_plan, self.registry)
        self.check_panel = CheckPanel(self.document, self.registry, self.merge_panel)
        self.welcome = WelcomePage()
        self.moe_panel = MoePanel()  # page 2: a mergekit-moe recipe, which the document does not hold
        self.files = RecipeFiles(self, self.document, self.registry, self.inspector, self.yaml_editor, self.settings,
                                 self.moe_panel)
        self.history = QUndoGroup(self)  # Undo and Redo act on the page shown: the designer's or the MoE page's
        for stack in (self.document.undo_stack, self.moe_panel.undo_stack):
            self.history.addStack(stack)
        self.history.setActiveStack(self.document.undo_stack)

        designer = QWidget()
        designer_layout = QVBoxLayout(designer)
        designer_layout.setContentsMargins(0, 0, 0, 0)
        designer_layout.setSpacing(0)
        designer_layout.addWidget(self.stage_bar)
        designer_layout.addWidget(self.stage_settings)
        designer_layout.addWidget(self.stack_view, 1)
        designer_layout.addWidget(self.slice_inspector)
        self.pages = QStackedWidget()
        self.pages.addWidget(_scrolling(self.welcome))
        self.pages.addWidget(designer)
        self.pages.addWidget(_scrolling(self.moe_panel))
        self.setCentralWidget(self.pages)

        self.tools = QTabWidget()
        self.tools.setDocumentMode(True)
        self.tools.addTab(self.yaml_editor, "YAML")
        self.tools.addTab(self.curve_editor, "t-curves")
        self.tools.addTab(_scrolling(self.estimate_panel), "Estimate")  # scrolls only in a short window
        self.merge_tab = self.tools.addTab(_scrolling(self.merge_panel), "Merge")
        self.tools.addTab(_scrolling(self.check_panel), "Check")  # perplexity, agreement, a prompt, sweeps
        self.analysis_panel = AnalysisPanel(self.document, self.registry)  # where to cut: similarity, seams
        self.tools.addTab(_scrolling(self.analysis_panel), "Analysis")
        self.analysis_panel.sigResult.connect(self.stack_view.set_analysis)  # distances drawn over the stacks
        self.donor_dock = self._dock("Donors", self.donor_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.tools_dock = self._dock("Recipe", self.tools, Qt.DockWidgetArea.RightDockWidgetArea)
        self.findings_dock = self._dock("Problems", self.findings_view, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

        self.summary_label = QLabel()
        self.summary_label.setToolTip("Output of the current stage: layer and parameter count")
        self.findings_label = QLabel()
        self._findings_text = "no problems"
        self.drag_label = QLabel()
        self.statusBar().addWidget(self.drag_label, 1)
        self.statusBar().addPermanentWidget(self.findings_label)
        self.statusBar().addPermanentWidget(self.summary_label)

        self._build_menus()
        self._connect()
        self.setAcceptDrops(True)
        self.setWindowIcon(QApplication.windowIcon())
        self.resize(1280, 800)
        if self.settings.window_geometry is not None:
            self.restoreGeometry(self.settings.window_geometry)
        self._restored = self.settings.window_state is not None and self.restoreState(self.settings.window_state)
        docks = (self.donor_dock, self.tools_dock, self.findings_dock)
        self._dock_shown = {dock: not dock.isHidden() for dock in docks}
        self._compact = False  # the donor dock was made a tab of the recipe tools' dock for a narrow window
        self._update_title()
        self._update_summary()
        self.show_welcome()

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"{title.lower()}Dock")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(area, dock)
        return dock

    def _build_menus(self) -> None:
        files, stack = self.files, self.stack_view.actions_
        undo = self.history.createUndoAction(self, "&Undo")
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        redo = self.history.createRedoAction(self, "&Redo")
        redo.setShortcuts(redo_shortcuts())
        self.undo_action, self.redo_action = undo, redo
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)

        menu = self.menuBar().addMenu("&File")
        menu.addAction(files.new)
        menu.addAction(files.new_moe)
        examples = menu.addMenu("New from &Example")
        for seed in seed_recipes():
            examples.addAction(seed.title, partial(self.welcome.open_seed, seed))
        examples.addSeparator()
        examples.addAction("Demo merge (two small models)…", self._start_demo)
        menu.addAction(files.open)
        menu.addMenu(files.recent_menu)
        menu.addSeparator()
        menu.addActions([files.save, files.save_as])
        menu.addSeparator()
        menu.addAction(quit_action)

        menu = self.menuBar().addMenu("&Edit")
        menu.addActions([undo, redo])
        menu.addSeparator()
        menu.addAction(files.paste)
        menu.addSeparator()
        menu.addActions(list(stack.actions))
        menu.addSeparator()
        menu.addActions(list(self.stage_actions.actions))

        menu = self.menuBar().addMenu("&View")
        for dock in (self.donor_dock, self.tools_dock, self.findings_dock):
            menu.addAction(dock.toggleViewAction())
        menu.addSeparator()
        theme_menu = menu.addMenu("&Theme")
        group = QActionGroup(self)
        for name in ("system", "light", "dark"):
            action = theme_menu.addAction(name.capitalize(), partial(self.set_theme, name))
            action.setCheckable(True)
            action.setChecked(name == self.settings.theme)
            group.addAction(action)

        menu = self.menuBar().addMenu("&Help")
        menu.addAction("&Welcome", self.show_welcome)
        menu.addAction("&About", self._about)

        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        toolbar.addActions([files.new, files.open, files.save])
        toolbar.addSeparator()
        history = self.history
        self.undo_button_actions = (UndoButtonAction(history, False, self), UndoButtonAction(history, True, self))
        toolbar.addActions(list(self.undo_button_actions))
        toolbar.addSeparator()
        toolbar.addActions([stack.move_up, stack.move_down, stack.duplicate, stack.delete])
        self.addToolBar(toolbar)

    def _connect(self) -> None:
        # A bound method, not a lambda: the undo stack, cleared as the window is deleted, must not
        # call back into it (a discarded edit made it emit cleanChanged then).
        self.document.undo_stack.cleanChanged.connect(self._show_modified)
        self.document.path_changed.connect(self._update_title)
        self.live_plan.plan_changed.connect(self._update_summary)
        self.document.current_stage_changed.connect(self._update_summary)
        self.findings_view.counts_changed.connect(self._update_findings)
        self.yaml_editor.error_changed.connect(self._update_yaml_error)
        self.stack_view.sigStatus.connect(self.drag_label.setText)
        self.inspector.busy_changed.connect(self._update_summary)
        self.files.opened.connect(self._on_opened)
        self.files.moe_opened.connect(self._show_moe)
        self.files.moe_started.connect(self.show_moe_page)
        self.registry.changed.connect(self._offer_donors_to_moe)
        self.moe_panel.save_requested.connect(self.files.save_recipe)
        self.moe_panel.undo_stack.cleanChanged.connect(self._update_title)
        self.welcome.back.connect(self.show_designer)
        self.welcome.open_recipe.connect(self.files.open_recipe)
        self.welcome.open_file.connect(self.files.open_path)
        self.welcome.open_dialog.connect(self.files.open_dialog)
        self.welcome.new_recipe.connect(self.files.new_recipe)
        self.welcome.new_moe.connect(self.files.new_moe_recipe)
        self.welcome.demo_opened.connect(self._show_merge_tab)

    # ---- reactions ------------------------------------------------------------------------

    def _on_opened(self, _path: object) -> None:
        """A new or opened recipe: the last merge's result belongs to the one before."""
        self.merge_panel.reset()
        self.show_designer()

    def _show_moe(self, recipe: MoeRecipe, path: Path) -> None:
        """An opened MoE recipe, with its donors resolved like the CLI does (folders next to it first)."""
        donors, errors = resolve_moe_donors(recipe, {}, path.parent)  # the panel names what is missing
        self.moe_panel.load(recipe, donors, path, errors)
        self.show_moe_page()

    def _offer_donors_to_moe(self) -> None:
        """The designer's donors, by their reference, are bases and experts the MoE page offers too."""
        self.moe_panel.offer_donors({self.registry.refs.get(n, n): d for n, d in self.registry.donors.items()})

    def _start_demo(self) -> None:
        """The demo merge, from the menu: the start page shows its progress."""
        self.show_welcome()
        self.welcome.start_demo()

    def _show_merge_tab(self) -> None:
        """The demo is there to be merged: show the Merge button at once."""
        self.tools.setCurrentIndex(self.merge_tab)

    def show_designer(self) -> None:
        self._show_page(1)

    def show_moe_page(self) -> None:
        """The MoE recipe's page (whole window, no docks)."""
        self._show_page(2)

    def show_welcome(self) -> None:
        self.welcome.set_recent_files(self.settings.recent_files)
        self.welcome.set_can_go_back(bool(self.pages.property("designer_seen")))
        self._show_page(0)

    def _show_page(self, index: int) -> None:
        """The start page gets the whole window; the designer brings its docks back."""
        if index == self.pages.currentIndex() and self.pages.property("shown"):
            return
        docks = (self.donor_dock, self.tools_dock, self.findings_dock)
        if self.pages.currentIndex() == 1 and self.pages.property("shown"):
            self._dock_shown = {dock: not dock.isHidden() for dock in docks}
        self.pages.setProperty("shown", True)
        self.pages.setProperty("designer_seen", bool(self.pages.property("designer_seen")) or index == 1)
        self.pages.setCurrentIndex(index)
        for dock in docks:
            dock.setVisible(index == 1 and self._dock_shown.get(dock, True))
        self.summary_label.setVisible(index == 1)
        self.findings_label.setVisible(index == 1)
        moe = index == 2
        self.files.moe_shown = moe
        self.history.setActiveStack(self.moe_panel.undo_stack if moe else self.document.undo_stack)
        for action in (*self.stack_view.actions_.actions, *self.stage_actions.actions):
            action.setVisible(index != 2)  # slice and stage edits mean nothing for an MoE recipe
        self._update_title()

    def set_theme(self, name: str) -> None:
        self.settings.theme = name
        apply_theme(QApplication.instance(), name)  # type: ignore[arg-type]
        self.stack_view.rebuild()
        self.yaml_editor.highlighter.apply_theme()

    def _update_title(self, *_: object) -> None:
        """The name and unsaved mark of the recipe on the page shown."""
        moe = self.files.moe_shown
        path = self.moe_panel.path if moe else self.document.path
        self.setWindowTitle(f"{path.name if path else 'Untitled'}[*] — {APP_TITLE}")
        self.setWindowModified(self.moe_panel.is_modified if moe else self.document.is_modified)

    def _update_summary(self, *_: object) -> None:
        stage_plan = self.live_plan.stage_plan(self.document.current_stage)
        text = plan_summary(stage_plan)
        if self.document.recipe.is_multi_stage:
            text = f"{self.document.stage.name or 'stage'}: {text}"
        if self.inspector.is_busy:
            text = f"inspecting donors… · {text}"
        self.summary_label.setText(text)

    def _update_findings(self, errors: int, warnings: int) -> None:
        parts = [f"{errors} error{'s' * (errors != 1)}"] if errors else []
        parts += [f"{warnings} warning{'s' * (warnings != 1)}"] if warnings else []
        self._findings_text = " · ".join(parts) or "no problems"
        self.findings_dock.setWindowTitle(f"Problems ({errors + warnings})" if errors + warnings else "Problems")
        self._update_yaml_error(self.yaml_editor.error)

    def _update_yaml_error(self, error: RecipeError | None) -> None:
        """While the YAML tab holds text that does not parse, the status bar says so (it is not applied)."""
        if error is None:
            self.findings_label.setText(self._findings_text)
            self.findings_label.setStyleSheet("")
            self.findings_label.setToolTip("")
            return
        where = f"line {error.line}" if error.line else "the YAML"
        self.findings_label.setText(f"YAML error at {where}: not applied · {self._findings_text}")
        self.findings_label.setStyleSheet("QLabel { color: #dc2626; }")
        self.findings_label.setToolTip(str(error))

    def _show_modified(self, clean: bool) -> None:
        if not self.files.moe_shown:
            self.setWindowModified(not clean)

    def _about(self) -> None:
        QMessageBox.about(self, f"About {APP_TITLE}",
                          f"<b>{APP_TITLE}</b><p>Design mergekit-compatible merge recipes, estimate them and "
                          "merge locally.</p>")

    # ---- Qt overrides ---------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._restored:  # first start: give the docks a share of the window
            self._restored = True
            width = self.width()
            self.resizeDocks([self.donor_dock, self.tools_dock],
                             [max(220, min(360, width * 23 // 100)), max(420, min(860, width * 40 // 100))],
                             Qt.Orientation.Horizontal)
            self.resizeDocks([self.findings_dock], [max(120, self.height() // 5)], Qt.Orientation.Vertical)
        self._fit_docks()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_docks()

    def _fit_docks(self) -> None:
        """In a narrow window the donor dock becomes a tab of the recipe tools' dock, and comes
        back to the left when the window is wide again (docks the user moved are left alone)."""
        compact = self.width() < COMPACT_WIDTH
        if compact == self._compact:
            return
        left = Qt.DockWidgetArea.LeftDockWidgetArea
        if compact and self.dockWidgetArea(self.donor_dock) == left and not self.donor_dock.isFloating() \
                and not self.tools_dock.isFloating():
            self.tabifyDockWidget(self.tools_dock, self.donor_dock)
            self.tools_dock.raise_()
            self._compact = True
        elif not compact and self.donor_dock in self.tabifiedDockWidgets(self.tools_dock):
            self.addDockWidget(left, self.donor_dock)
            self.resizeDocks([self.donor_dock], [max(220, min(360, self.width() * 23 // 100))],
                             Qt.Orientation.Horizontal)
            self._compact = False
        else:
            self._compact = compact

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(self._dropped_kind(url.toLocalFile()) for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            kind = self._dropped_kind(str(path))
            if kind == "recipe":
                self.files.open_path(path)
                break
            if kind == "donor":
                self.donor_panel.add_folder(path)
                self.show_designer()
        event.acceptProposedAction()

    @staticmethod
    def _dropped_kind(local_file: str) -> str | None:
        if not local_file:
            return None
        path = Path(local_file)
        if path.is_dir():
            return "donor"
        return "recipe" if path.suffix.lower() in RECIPE_SUFFIXES else None

    def terminate(self) -> None:
        """Close at once, without asking to save: the process was told to stop (SIGTERM, SIGHUP,
        Ctrl-C). A running merge is cancelled and its partial folder removed first."""
        self._terminating = True
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._terminating and not self.files.maybe_save():
            event.ignore()
            return
        self.settings.window_geometry = self.saveGeometry()
        if self.pages.currentIndex() == 1:  # the start page hides the docks; keep the designer's layout
            self.settings.window_state = self.saveState()
        self.settings.sync()
        self.inspector.shutdown()
        self.merge_panel.close()  # stops a running merge and waits for its thread
        self.check_panel.close()  # the same for a running check or sweep
        self.analysis_panel.close()
        self.moe_panel.close()  # the same for a running MoE merge
        event.accept()
