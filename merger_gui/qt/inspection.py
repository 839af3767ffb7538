"""Donor inspection off the GUI thread: reading configs and headers never blocks the window."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from merger_gui.core.errors import UserError
from merger_gui.core.profiles import PROFILE_PREFIX
from merger_gui.core.recipe import Recipe
from merger_gui.core.resolve import resolve_donor

from .donor_registry import DonorRegistry


def error_label(ref: str | None, message: str) -> str:
    """How a donor that failed inspection is labelled: ``"unreadable: REASON"`` when its folder is
    there but its files are broken, ``"not found"`` when its reference names nothing, else
    ``"unavailable: REASON"`` (a Hub repo that cannot be reached, a LoRA reference…)."""
    folder = Path(ref).expanduser() if ref and not ref.startswith(PROFILE_PREFIX) else None
    if folder is not None and folder.exists():
        return f"unreadable: {_reason(message.replace(f'{folder}/', '').replace(str(folder), folder.name))}"
    return "not found" if "not found" in message else f"unavailable: {_reason(message)}"


def _reason(message: str) -> str:
    """The message without the donor name or path it starts with (the row shows the donor)."""
    parts = message.split(": ")
    while len(parts) > 1 and (parts[0].startswith("donor ") or "/" in parts[0] or "\\" in parts[0]):
        parts.pop(0)
    return ": ".join(parts)


class _Relay(QObject):
    """Lives on the GUI thread; a worker emits on it and Qt queues the call across threads."""

    done = Signal(str, int, object, object)  # name, generation, DonorInfo | None, error | None


class _InspectJob(QRunnable):
    def __init__(self, name: str, ref: str, generation: int, relay: _Relay) -> None:
        super().__init__()
        self.name, self.ref, self.generation, self.relay = name, ref, generation, relay

    def run(self) -> None:
        try:
            info, error = resolve_donor(self.ref, name=self.name), None
        except UserError as exc:
            info, error = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken donor folder must not kill the worker
            info, error = None, f"{self.ref}: {type(exc).__name__}: {exc}"
        self.relay.done.emit(self.name, self.generation, info, error)


class DonorInspector(QObject):
    """Inspects donor references on a thread pool and fills the :class:`DonorRegistry`.

    Results of an inspection superseded by a newer one for the same name (or arriving
    after :meth:`shutdown`) are ignored.
    """

    busy_changed = Signal(bool)
    pending_changed = Signal()

    def __init__(self, registry: DonorRegistry, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.registry = registry
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(4)  # mostly waiting on disk or network
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)
        self._generation: dict[str, int] = {}
        self._pending: dict[str, str] = {}
        self._closed = False

    @property
    def pending(self) -> dict[str, str]:
        """Names being inspected → their reference."""
        return dict(self._pending)

    @property
    def is_busy(self) -> bool:
        return bool(self._pending)

    def inspect(self, name: str, ref: str) -> None:
        """Inspect ``ref`` (folder, repo id or ``profile:NAME``) as the donor of model ``name``."""
        if self._closed:
            return
        was_busy = self.is_busy
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        self._pending[name] = ref
        self._pool.start(_InspectJob(name, ref, generation, self._relay))
        self.pending_changed.emit()
        if not was_busy:
            self.busy_changed.emit(True)

    def inspect_recipe(self, recipe: Recipe, overrides: dict[str, str] | None = None,
                       base_dir: Path | None = None, *, only_missing: bool = False) -> None:
        """Inspect every model the recipe references that is not one of its own stages.

        A name without an override is its own reference; a relative folder name is looked
        up against ``base_dir`` (the recipe's folder) first.
        """
        overrides = overrides or {}
        stage_names = set(recipe.stage_names())
        for stage in recipe.stages:
            for name in stage.referenced_models:
                if name in stage_names or name in self._pending:
                    continue
                if only_missing and name not in overrides and (name in self.registry.refs):
                    continue
                self.inspect(name, overrides.get(name) or self._default_ref(name, base_dir))

    @staticmethod
    def _default_ref(name: str, base_dir: Path | None) -> str:
        if base_dir is not None and not name.startswith(PROFILE_PREFIX):
            local = Path(base_dir) / Path(name).expanduser()
            if not Path(name).expanduser().is_absolute() and local.is_dir():
                return str(local)
        return name

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until every job finished (tests, screenshots); True when none is left."""
        return self._pool.waitForDone(timeout_ms)

    def shutdown(self, timeout_ms: int = 2000) -> None:
        """Drop queued jobs, ignore late results and wait briefly for running ones."""
        self._closed = True
        self._pool.clear()
        self._pending.clear()
        self._generation.clear()
        self._pool.waitForDone(timeout_ms)

    @Slot(str, int, object, object)
    def _on_done(self, name: str, generation: int, info: object, error: object) -> None:
        if self._closed or self._generation.get(name) != generation:
            return
        ref = self._pending.pop(name, name)
        if info is not None:
            self.registry.set_donor(name, ref, info)  # type: ignore[arg-type]
        else:
            self.registry.set_error(name, ref, str(error))
        self.pending_changed.emit()
        if not self._pending:
            self.busy_changed.emit(False)
