"""What validation reports: one :class:`Finding` per problem of a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..quick_fixes import Fix

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem of a recipe; indices are 0-based (``location`` shows them 1-based)."""

    severity: Severity
    code: str
    message: str
    stage: int | None = None
    slice: int | None = None
    source: int | None = None
    key: str | None = None  # the field at fault: "layer_range", "parameters.t[2].value", …
    stage_name: str | None = None
    fix: Fix | None = None  # the one edit the message names, when it names one

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def location(self) -> str:
        """Where the problem is, e.g. ``stage 'Nyxene-11B' › slice 2 › source 1``."""
        parts = []
        if self.stage is not None:
            parts.append(f"stage {self.stage_name!r}" if self.stage_name else f"stage {self.stage + 1}")
        if self.slice is not None:
            parts.append(f"slice {self.slice + 1}")
        if self.source is not None:
            parts.append(f"source {self.source + 1}")
        return " › ".join(parts) or "recipe"
