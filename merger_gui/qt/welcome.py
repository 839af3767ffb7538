"""The start page shown with no recipe open: seed recipes, a real merge to try, recent files."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QStandardPaths, Qt, QThreadPool, Signal
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from merger_gui.core.errors import UserError
from merger_gui.core.recipe import Recipe
from merger_gui.core.recipe_yaml import load_recipe_text

SEEDS_FILE = "seeds.json"


@dataclass(frozen=True)
class SeedRecipe:
    """A recipe shipped with the app, with shape profiles for its donors."""

    file: str
    title: str
    summary: str
    donors: dict[str, str]

    def text(self) -> str:
        return _recipe_text(self.file)


def _recipe_text(name: str) -> str:
    """The text of ``resources/recipes/NAME``."""
    return files("merger_gui.resources").joinpath("recipes").joinpath(name).read_text(encoding="utf-8")


def seed_recipes() -> list[SeedRecipe]:
    """The seed recipes listed in ``resources/recipes/seeds.json``, in file order."""
    data = json.loads(_recipe_text(SEEDS_FILE))
    return [SeedRecipe(file, entry["title"], entry["summary"], dict(entry["donors"])) for file, entry in data.items()]


def default_demo_folder() -> Path:
    """Where the demo donors go: the app's data folder."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".merger_gui") / "demo-donors"


class _DemoSignals(QObject):
    done = Signal(object, object)  # Recipe, refs
    failed = Signal(str)


class _DemoJob(QRunnable):
    """Writes the demo donors off the GUI thread (importing torch and writing takes a second)."""

    def __init__(self, folder: Path, signals: _DemoSignals) -> None:
        super().__init__()
        self.folder = folder
        self.signals = signals  # owned by the page: never destroyed on the pool's thread

    def run(self) -> None:
        from merger_gui.demo import create_demo_donors

        try:
            recipe, refs = create_demo_donors(self.folder)
        except (OSError, UserError) as exc:
            self.signals.failed.emit(f"could not write the demo models to {self.folder}: {exc}")
            return
        self.signals.done.emit(recipe, refs)


class WelcomePage(QWidget):
    """Offers the seed recipes, a demo merge, and the user's own recipes.

    Signals:
        open_recipe(tuple): ``(Recipe, source text or None, {model name: donor ref})``.
        open_file(Path): a recent recipe was clicked.
        open_dialog(): "Open recipe…" was clicked.
        new_recipe(): "New empty recipe" was clicked.
        new_moe(): "New MoE recipe" was clicked.
        demo_opened(): the demo recipe was opened (after ``open_recipe``): time to offer Merge.
        back(): "Back to the recipe" was clicked (shown once a recipe is open).

    Args:
        demo_folder: Where the demo donors are written (default: the app's data folder).
        pool: Thread pool for writing them (default: the global one).
    """

    open_recipe = Signal(object)
    open_file = Signal(object)  # Path
    open_dialog = Signal()
    new_recipe = Signal()
    new_moe = Signal()
    demo_failed = Signal(str)
    demo_opened = Signal()
    back = Signal()

    def __init__(self, parent: QWidget | None = None, *, demo_folder: Path | None = None,
                 pool: QThreadPool | None = None) -> None:
        super().__init__(parent)
        self.demo_folder = demo_folder or default_demo_folder()
        self.pool = pool or QThreadPool.globalInstance()
        self._job: _DemoJob | None = None

        title = QLabel("Design a merge")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.8)
        font.setBold(True)
        title.setFont(font)
        intro = QLabel("Lay out layers, shape SLERP curves, see the size and memory of the result before "
                       "downloading anything, then merge locally. Start from a known recipe:")
        intro.setWordWrap(True)

        cards = QHBoxLayout()
        cards.setSpacing(14)
        self.seed_buttons: dict[str, QPushButton] = {}
        for seed in seed_recipes():
            button = QPushButton(f"Open {seed.title}")
            button.clicked.connect(lambda _=False, s=seed: self.open_seed(s))
            self.seed_buttons[seed.file] = button
            profiles = ", ".join(sorted(set(seed.donors.values())))
            text = (f"<p>{seed.summary}</p><p style=\"color:gray\">Planned with built-in shapes ({profiles}): "
                    "nothing to download.</p>")
            cards.addWidget(self._card(seed.title, text, button))
        self.demo_button = QPushButton("Create demo models")
        self.demo_button.clicked.connect(self.start_demo)
        cards.addWidget(self._card(
            "Try a real merge",
            "Writes two small random 8-layer models on this computer and opens a SLERP recipe "
            "over them: press <b>Merge</b> and have a merged model within a minute.", self.demo_button))
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.open_button = QPushButton("Open recipe…")
        self.open_button.clicked.connect(self.open_dialog)
        self.new_button = QPushButton("New empty recipe")
        self.new_button.clicked.connect(self.new_recipe)
        self.new_moe_button = QPushButton("New MoE recipe")
        self.new_moe_button.setToolTip("A mixture of experts from dense donors, as mergekit-moe builds it")
        self.new_moe_button.clicked.connect(self.new_moe)
        self.back_button = QPushButton("Back to the recipe")
        self.back_button.setToolTip("Return to the designer with the open recipe as it is")
        self.back_button.clicked.connect(self.back)
        self.back_button.hide()
        self.recent_label = QLabel()
        self.recent_label.setTextFormat(Qt.TextFormat.RichText)
        self.recent_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.recent_label.linkActivated.connect(lambda link: self.open_file.emit(Path(link)))
        own = QGridLayout()
        own.setHorizontalSpacing(40)
        own.setVerticalSpacing(8)
        own.addWidget(self._heading("Your recipes"), 0, 0)
        own.addWidget(self._heading("Recent"), 0, 1)
        buttons = QVBoxLayout()
        buttons.setSpacing(6)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.new_moe_button)
        buttons.addWidget(self.back_button)
        buttons.addStretch(1)
        own.addLayout(buttons, 1, 0)
        own.addWidget(self.recent_label, 1, 1)
        own.setColumnStretch(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(40, 32, 40, 32)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addSpacing(12)
        layout.addLayout(cards)
        layout.addWidget(self.status_label)
        layout.addSpacing(24)
        layout.addLayout(own)
        layout.addStretch(1)
        self.set_recent_files(())

    @staticmethod
    def _heading(text: str) -> QLabel:
        label = QLabel(f"<b>{text}</b>")
        label.setObjectName("sectionTitle")
        return label

    def set_can_go_back(self, can: bool) -> None:
        """Offer the way back to the designer (once a recipe has been open)."""
        self.back_button.setVisible(can)

    def set_recent_files(self, paths: Sequence[Path]) -> None:
        """List ``paths`` (the existing ones) as links that emit ``open_file``."""
        rows = [f'<a href="{html.escape(str(p))}">{html.escape(p.name)}</a>'
                f'&nbsp;&nbsp;<span style="color:gray">{html.escape(str(p.parent))}</span>'
                for p in paths if p.is_file()]
        self.recent_label.setText("<br>".join(rows) if rows else
                                  '<span style="color:gray">Recipes you open or save appear here.</span>')
        self.recent_label.setToolTip("Click a recipe to open it" if rows else "")

    def _card(self, heading: str, text: str, button: QPushButton) -> QFrame:
        card = QFrame()
        card.setFrameShape(QFrame.Shape.StyledPanel)
        card.setMinimumWidth(220)
        box = QVBoxLayout(card)
        box.setContentsMargins(16, 14, 16, 14)
        head = QLabel(f"<b>{heading}</b>")
        body = QLabel(text)
        body.setWordWrap(True)
        body.setTextFormat(Qt.TextFormat.RichText)
        body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        box.addWidget(head)
        box.addWidget(body, 1)
        box.addWidget(button)
        return card

    def open_seed(self, seed: SeedRecipe) -> None:
        """Emit ``open_recipe`` for a seed recipe, with its profiles as donors."""
        text = seed.text()
        self.open_recipe.emit((load_recipe_text(text), text, dict(seed.donors)))

    def start_demo(self) -> None:
        """Write the demo donors in the thread pool; ``open_recipe`` follows when done."""
        if self._job is not None:
            return
        self.demo_button.setEnabled(False)
        self.status_label.setText(f"Writing two small models to {self.demo_folder}…")
        signals = _DemoSignals(self)
        signals.done.connect(self._demo_done)
        signals.failed.connect(self._demo_failed)
        job = _DemoJob(self.demo_folder, signals)
        self._job = job
        self.pool.start(job)

    def _finish_job(self) -> None:
        if self._job is not None:
            self._job.signals.deleteLater()
        self._job = None

    def _demo_done(self, recipe: Recipe, refs: dict[str, str]) -> None:
        self._finish_job()
        self.demo_button.setEnabled(True)
        self.status_label.setText("Demo models ready: the recipe is open, press Merge in the Merge panel.")
        self.open_recipe.emit((recipe, None, refs))
        self.demo_opened.emit()

    def _demo_failed(self, message: str) -> None:
        self._finish_job()
        self.demo_button.setEnabled(True)
        self.status_label.setText(message)
        self.demo_failed.emit(message)
