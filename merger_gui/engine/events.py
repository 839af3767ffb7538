"""Progress events of a merge run and the cancellation error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from merger_gui.core.errors import UserError


class MergeCancelled(UserError):
    """The merge was cancelled; the partial output was removed."""


@dataclass(frozen=True)
class StageStarted:
    index: int  # position in run order, 0-based
    count: int
    name: str
    tensors: int
    reused: bool


@dataclass(frozen=True)
class TensorProgress:
    name: str
    index: int  # 1-based position of this tensor within its stage
    count: int  # tensors of the stage
    overall_index: int  # 1-based, over every stage being merged
    overall_count: int
    bytes_written: int  # over every stage being merged
    total_bytes: int
    eta: float | None  # estimated seconds left


@dataclass(frozen=True)
class DownloadProgress:
    model: str
    file: str
    downloaded: int  # bytes of this file so far
    total: int


@dataclass(frozen=True)
class MergeWarning:
    message: str


@dataclass(frozen=True)
class StageFinished:
    index: int
    count: int
    name: str
    path: Path
    reused: bool
    seconds: float


@dataclass(frozen=True)
class MergeDone:
    path: Path
    tensors: int
    bytes_written: int
    seconds: float


@dataclass(frozen=True)
class GateProgress:
    """The routers of an MoE: ``done`` of ``total`` prompt batches read (each expert's positive,
    then its negative prompts); ``done`` 0 once the base model is loaded, before the first."""

    done: int
    total: int
    expert: str  # "expert 2", "shared expert 1": the batch just read (the next one at 0)
    model: str  # that expert's donor


MergeEvent = StageStarted | TensorProgress | DownloadProgress | MergeWarning | StageFinished | MergeDone | GateProgress
