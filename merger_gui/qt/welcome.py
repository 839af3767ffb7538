"""The start page shown with no recipe open: the seed recipes and a real merge to try."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QStandardPaths, Qt, QThreadPool, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

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
        return files("merger_gui.resources").joinpath("recipes", self.file).read_text(encoding="utf-8")


def seed_recipes() -> list[SeedRecipe]:
    """The seed recipes listed in ``resources/recipes/seeds.json``, in file order."""
    data = json.loads(files("merger_gui.resources").joinpath("recipes", SEEDS_FILE).read_text(encoding="utf-8"))
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

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.signals = _DemoSignals()

    def run(self) -> None:
        from merger_gui.demo import create_demo_donors

        try:
            recipe, refs = create_demo_donors(self.folder)
        except (OSError, UserError) as exc:
            self.signals.failed.emit(f"could not write the demo models to {self.folder}: {exc}")
            return
        self.signals.done.emit(recipe, refs)


class WelcomePage(QWidget):
    """Offers the seed recipes and a demo merge.

    Signals:
        open_recipe(tuple): ``(Recipe, source text or None, {model name: donor ref})``.

    Args:
        demo_folder: Where the demo donors are written (default: the app's data folder).
        pool: Thread pool for writing them (default: the global one).
    """

    open_recipe = Signal(object)
    demo_failed = Signal(str)

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
            cards.addWidget(self._card(seed.title, f"<p>{seed.summary}</p><p style=\"color:#666\">Planned with built-in shapes "
                                       f"({profiles}): nothing to download.</p>", button))
        self.demo_button = QPushButton("Create demo models")
        self.demo_button.clicked.connect(self.start_demo)
        cards.addWidget(self._card(
            "Try a real merge",
            "Writes two small random 8-layer models on this computer and opens a SLERP recipe "
            "over them: press <b>Merge</b> and have a merged model within a minute.", self.demo_button))
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(40, 32, 40, 32)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addSpacing(12)
        layout.addLayout(cards)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

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
        job = _DemoJob(self.demo_folder)
        job.signals.done.connect(self._demo_done)
        job.signals.failed.connect(self._demo_failed)
        self._job = job
        self.pool.start(job)

    def _demo_done(self, recipe: Recipe, refs: dict[str, str]) -> None:
        self._job = None
        self.demo_button.setEnabled(True)
        self.status_label.setText("Demo models ready: the recipe is open, press Merge in the Merge panel.")
        self.open_recipe.emit((recipe, None, refs))

    def _demo_failed(self, message: str) -> None:
        self._job = None
        self.demo_button.setEnabled(True)
        self.status_label.setText(message)
        self.demo_failed.emit(message)
