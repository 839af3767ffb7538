"""Donor metadata known to the window, keyed by the model name a recipe uses."""

from __future__ import annotations

from typing import TypeVar

from PySide6.QtCore import QObject, Signal

from merger_gui.core.donor import DonorInfo

_V = TypeVar("_V")


class DonorRegistry(QObject):
    """Maps recipe model names to inspected :class:`DonorInfo` and to the reference used.

    ``refs`` holds what the user chose for a name (a folder, a repo id or ``profile:…``);
    ``donors`` holds the inspection result once a worker delivered it; ``errors`` holds a
    one-line message for names whose inspection failed.
    """

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.refs: dict[str, str] = {}
        self.donors: dict[str, DonorInfo] = {}
        self.errors: dict[str, str] = {}

    def donor(self, name: str) -> DonorInfo | None:
        return self.donors.get(name)

    def set_donor(self, name: str, ref: str, info: DonorInfo) -> None:
        self.refs[name] = ref
        self.donors[name] = info
        self.errors.pop(name, None)
        self.changed.emit()

    def set_error(self, name: str, ref: str, message: str) -> None:
        self.refs[name] = ref
        self.donors.pop(name, None)
        self.errors[name] = message
        self.changed.emit()

    def remove(self, name: str) -> None:
        for table in (self.refs, self.donors, self.errors):
            table.pop(name, None)
        self.changed.emit()

    def rename(self, old: str, new: str) -> None:
        """Move everything known under ``old`` to ``new``."""
        _move(self.refs, old, new)
        _move(self.donors, old, new)
        _move(self.errors, old, new)
        self.changed.emit()

    def entry(self, name: str) -> tuple[str | None, DonorInfo | None, str | None]:
        """What is known under ``name`` (reference, donor, error), to :meth:`restore` later."""
        return self.refs.get(name), self.donors.get(name), self.errors.get(name)

    def restore(self, name: str, entry: tuple[str | None, DonorInfo | None, str | None]) -> None:
        """Put back what :meth:`entry` returned for ``name``."""
        ref, donor, error = entry
        _put(self.refs, name, ref)
        _put(self.donors, name, donor)
        _put(self.errors, name, error)
        self.changed.emit()

    def unique_name(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``… when a donor already has that name."""
        taken = set(self.refs) | set(self.donors) | set(self.errors)
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        return name

    def clear(self) -> None:
        self.refs.clear()
        self.donors.clear()
        self.errors.clear()
        self.changed.emit()


def _move(table: dict[str, _V], old: str, new: str) -> None:
    if old in table:
        table[new] = table.pop(old)


def _put(table: dict[str, _V], name: str, value: _V | None) -> None:
    """Set ``name`` to ``value``, or forget it for None."""
    if value is None:
        table.pop(name, None)
    else:
        table[name] = value
