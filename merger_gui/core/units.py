"""Sizes, durations and counts as the window and the CLI show them."""

from __future__ import annotations

MIB = 2**20
GIB = 2**30


def format_size(nbytes: int, digits: int = 1, *, signed: bool = False) -> str:
    """``24.2 GiB`` (binary units, GiB = 2^30 bytes); below 0.1 GiB in MiB, so a small model does not
    read ``0.0 GiB``. ``digits`` are the GiB decimals; ``signed`` adds ``+`` to positive sizes."""
    sign = "+" if signed and nbytes > 0 else ""
    if abs(nbytes) >= GIB // 10 or nbytes == 0:
        return f"{sign}{nbytes / GIB:.{digits}f} GiB"
    return f"{sign}{nbytes / MIB:.1f} MiB"


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``2 min 05 s``, ``1 h 02 min``: tenths only below ten seconds."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {whole:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_count(count: int) -> str:
    """``19.99 B``, ``1.25 M``, ``12.50 K`` (decimal, as parameter counts are published); ``999`` below."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale * 0.999995:  # what would print as 1000.00 of the smaller unit
            return f"{count / scale:.2f} {suffix}"
    return str(count)
