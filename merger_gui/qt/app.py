"""Start the designer: ``merger-gui [RECIPE] [--donor NAME=REF]…`` or render a screenshot.

``merger-gui --screenshot PNG [RECIPE] [--donor NAME=REF]… [--size 1280x800] [--theme light|dark]``
renders the main window offscreen, once donor inspection has finished, and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from .display_check import display_problem

if TYPE_CHECKING:  # Qt is imported lazily, once the command line is read
    from PySide6.QtGui import QIcon

    from .main_window import MainWindow

ORGANIZATION = "merger-gui"
APPLICATION = "Merger GUI"
SCREENSHOT_TIMEOUT_S = 60.0


TOOL_TABS = ("yaml", "t-curves", "estimate", "merge", "check", "analysis")  # in the window's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merger-gui", description="Design mergekit-compatible merge recipes.")
    parser.add_argument("recipe", nargs="?", type=Path, help="recipe YAML file to open")
    parser.add_argument("--donor", action="append", default=[], metavar="NAME=REF",
                        help="use REF (a folder, repo id or profile:NAME) for the recipe's model NAME")
    parser.add_argument("--theme", choices=("light", "dark", "system"), help="colour theme (default: as last time)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="render the window to PNG and exit")
    parser.add_argument("--size", default="1280x800", help="window size for --screenshot, WIDTHxHEIGHT")
    parser.add_argument("--tab", choices=TOOL_TABS, help="recipe tool to show: " + ", ".join(TOOL_TABS))
    parser.add_argument("--stage", type=int, metavar="N", help="stage of a multi-stage recipe to show (1-based)")
    return parser


def _parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 200 or int(height) < 200:
        raise SystemExit(f"merger-gui: error: bad --size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x800")
    return int(width), int(height)


def _recipe_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened as a recipe, or None when it can."""
    from merger_gui.core.errors import UserError
    from merger_gui.core.recipe_yaml import load_recipe_text, read_recipe_text

    try:
        load_recipe_text(read_recipe_text(path))
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except (UnicodeDecodeError, UserError) as exc:
        return f"{path}: {exc}"
    return None


def app_icon() -> QIcon:
    from PySide6.QtGui import QIcon

    icon = QIcon()
    folder = files("merger_gui.resources").joinpath("icons")
    for size in (16, 32, 48, 64, 128, 256, 512):
        png = folder.joinpath(f"merger-gui-{size}.png")
        if png.is_file():
            icon.addFile(str(png))
    return icon


def main(argv: Sequence[str] | None = None) -> int:
    """Run the designer (or render a screenshot); returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    size = _parse_size(args.size)
    if args.screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before QApplication exists

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from merger_gui.core.errors import UserError
    from merger_gui.core.resolve import parse_donor_overrides

    from .settings import Settings
    from .theme import apply_theme

    try:
        overrides = parse_donor_overrides(args.donor)
    except UserError as exc:
        print(f"merger-gui: error: {exc}", file=sys.stderr)
        return 2
    if args.screenshot and args.recipe is not None and (problem := _recipe_problem(args.recipe)):
        print(f"merger-gui: error: {problem}", file=sys.stderr)  # offscreen, a dialog would wait forever
        return 1
    if QApplication.instance() is None and (problem := display_problem()):
        print(f"merger-gui: error: {problem}", file=sys.stderr)  # Qt would abort, blaming the installation
        return 1
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "merger-gui"])
    assert isinstance(app, QApplication)  # the window needs widgets, never a bare QCoreApplication
    if not app.organizationName():
        app.setOrganizationName(ORGANIZATION)
    if not app.applicationName() or app.applicationName() == Path(sys.argv[0] if sys.argv else "").name:
        app.setApplicationName(APPLICATION)
    app.setWindowIcon(app_icon())
    # Python's cycle collector runs in whichever thread allocates; Qt objects it frees on a worker
    # thread (a merge, an inspection, an analysis) warn or crash. Collect on the GUI thread instead.
    from pyqtgraph.util.garbage_collector import GarbageCollector

    collector = GarbageCollector(interval=1.0)  # noqa: F841 - kept alive while the app runs
    if args.screenshot:
        # A screenshot never reads or writes the user's settings.
        ini = Path(tempfile.mkdtemp(prefix="merger-gui-shot-")) / "settings.ini"
        settings = Settings(QSettings(str(ini), QSettings.Format.IniFormat))
    else:
        settings = Settings()
    apply_theme(app, args.theme or settings.theme)

    from .main_window import MainWindow

    window = MainWindow(settings)
    if args.recipe is not None and not window.files.open_path(args.recipe, overrides, ask=False) and args.screenshot:
        return 1
    if args.stage is not None:
        window.document.set_current_stage(args.stage - 1)
    if args.tab is not None:
        window.tools.setCurrentIndex(TOOL_TABS.index(args.tab))
    if args.screenshot:
        return 0 if save_screenshot(window, args.screenshot, size) else 1
    window.show()
    from .termination import TerminationSignals

    terminations = TerminationSignals(app)
    terminations.received.connect(window.terminate)
    try:
        return app.exec()
    finally:
        terminations.restore()


def save_screenshot(window: MainWindow, path: Path, size: tuple[int, int], close: bool = True) -> bool:
    """Show ``window`` at ``size``, wait until donors are inspected and every debounced view
    has refreshed, and save it to ``path``; closes it (without a save prompt) unless told not to."""
    from .settle import settle

    window.resize(*size)
    window.show()
    settle(window, SCREENSHOT_TIMEOUT_S)
    image = window.grab()
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(str(path))
    if close:
        window.document.undo_stack.setClean()  # nothing to save: close without asking
        window.close()
    return ok


if __name__ == "__main__":  # python -m merger_gui.qt.app
    sys.exit(main())
