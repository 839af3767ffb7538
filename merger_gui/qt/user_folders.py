"""Where file dialogs and proposed output folders start: the user's folders, never the installed app."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from PySide6.QtCore import QStandardPaths

import merger_gui


def package_folders() -> tuple[Path, ...]:
    """The folders the app is installed in (its code and its bundled resources)."""
    return tuple(Path(str(p)).resolve() for p in (Path(merger_gui.__file__).parent, files("merger_gui.resources")))


def is_inside_package(path: Path) -> bool:
    """Whether ``path`` lies in the installed app (a seed recipe opened from there, say)."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == p or p in resolved.parents for p in package_folders())


def documents_folder() -> Path:
    """The user's Documents folder when there is one, else home."""
    found = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(found) if found and Path(found).is_dir() else Path.home()


def user_folder(*candidates: Path | str | None) -> Path:
    """The first candidate that is an existing folder outside the installed app, else Documents."""
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and not is_inside_package(Path(candidate)):
            return Path(candidate)
    return documents_folder()
