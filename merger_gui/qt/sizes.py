"""Byte counts as the app shows them (binary units, as everywhere in the app)."""

from __future__ import annotations

from merger_gui.core.estimator import format_gib
from merger_gui.core.runtime_presets import GIB

MIB = 1 << 20


def format_size(nbytes: int, digits: int = 1) -> str:
    """``24.2 GiB``; below 0.1 GiB in MiB, so a small model does not read ``0.00 GiB``."""
    return format_gib(nbytes, digits=digits) if nbytes >= GIB // 10 or nbytes == 0 else f"{nbytes / MIB:.1f} MiB"
