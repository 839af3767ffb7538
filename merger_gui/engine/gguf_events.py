"""What a GGUF export reports, and its cancellation: torch- and gguf-free, so the window imports them at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from merger_gui.core.errors import UserError


class ExportCancelled(UserError):
    """The export was cancelled; nothing was left behind."""


@dataclass(frozen=True)
class ExportProgress:
    name: str  # the GGUF tensor just written
    index: int  # 1-based
    count: int
    bytes_written: int  # tensor data so far
    total_bytes: int
    eta: float | None


@dataclass(frozen=True)
class ExportDone:
    path: Path
    tensors: int
    tensor_bytes: int  # tensor data, what the estimator predicts
    file_bytes: int
    seconds: float


ExportEvent = ExportProgress | ExportDone
