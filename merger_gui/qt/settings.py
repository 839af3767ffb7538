"""One typed wrapper over ``QSettings``: every key the app stores, with its type and default."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

MAX_RECENT = 10


class Settings:
    """Recent files (and the donors chosen for them), last folders, window geometry/state and theme.

    Uses the application's organisation/application names (tests set temporary ones, so
    the real settings file is never touched).
    """

    def __init__(self, settings: QSettings | None = None) -> None:
        self._qs = settings or QSettings()

    def _str(self, key: str, default: str = "") -> str:
        value = self._qs.value(key, default)
        return value if isinstance(value, str) else default

    def _bytes(self, key: str) -> QByteArray | None:
        value = self._qs.value(key)
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    @property
    def recent_files(self) -> list[Path]:
        value = self._qs.value("recent/files", [])
        items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
        return [Path(p) for p in items if isinstance(p, str) and p]

    def add_recent_file(self, path: Path) -> None:
        items = [str(Path(path).resolve())] + [str(p) for p in self.recent_files]
        unique = list(dict.fromkeys(items))[:MAX_RECENT]
        self._qs.setValue("recent/files", unique)

    def clear_recent_files(self) -> None:
        self._qs.setValue("recent/files", [])

    def _all_donor_refs(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._str("recipes/donors", "{}"))
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def donor_refs(self, recipe: Path) -> dict[str, str]:
        """The donors chosen for the models of recipe file ``recipe`` (model name → reference)."""
        refs = self._all_donor_refs().get(str(Path(recipe).resolve()), {})
        return {str(k): str(v) for k, v in refs.items()}

    def set_donor_refs(self, recipe: Path, refs: dict[str, str]) -> None:
        """Remember ``refs`` for ``recipe``; only recent recipes' donors are kept."""
        data = self._all_donor_refs()
        data[str(Path(recipe).resolve())] = dict(refs)
        recent = {str(p) for p in self.recent_files} | {str(Path(recipe).resolve())}
        self._qs.setValue("recipes/donors", json.dumps({k: v for k, v in data.items() if k in recent and v}))

    def last_folder(self, kind: str, default: Path | None = None) -> str:
        """Last folder used for ``kind`` (``"recipe"``, ``"donor"``); ``default`` (home) when unknown."""
        folder = self._str(f"folders/{kind}")
        return folder if folder and Path(folder).is_dir() else str(default or Path.home())

    def set_last_folder(self, kind: str, folder: Path | str) -> None:
        self._qs.setValue(f"folders/{kind}", str(folder))

    @property
    def window_geometry(self) -> QByteArray | None:
        return self._bytes("window/geometry")

    @window_geometry.setter
    def window_geometry(self, value: QByteArray) -> None:
        self._qs.setValue("window/geometry", value)

    @property
    def window_state(self) -> QByteArray | None:
        return self._bytes("window/state")

    @window_state.setter
    def window_state(self, value: QByteArray) -> None:
        self._qs.setValue("window/state", value)

    @property
    def theme(self) -> str:
        """``"light"``, ``"dark"`` or ``"system"``."""
        value = self._str("appearance/theme", "system")
        return value if value in ("light", "dark", "system") else "system"

    @theme.setter
    def theme(self, value: str) -> None:
        self._qs.setValue("appearance/theme", value)

    @property
    def curve_presets(self) -> dict[str, tuple[float, ...]]:
        """The user's own curve shapes (name → gradient values), shared by every recipe."""
        try:
            data = json.loads(self._str("curves/presets", "{}"))
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): tuple(float(x) for x in v) for k, v in data.items()
                if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}

    def save_curve_preset(self, name: str, values: tuple[float, ...]) -> None:
        """Keep ``values`` as user preset ``name`` (replacing one of that name)."""
        presets = self.curve_presets
        presets[name] = values
        self._qs.setValue("curves/presets", json.dumps({k: list(v) for k, v in presets.items()}))

    def remove_curve_preset(self, name: str) -> None:
        presets = self.curve_presets
        presets.pop(name, None)
        self._qs.setValue("curves/presets", json.dumps({k: list(v) for k, v in presets.items()}))

    def sync(self) -> None:
        self._qs.sync()
