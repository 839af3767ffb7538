"""Which layers of two donors are alike: cosine similarity of whole layers' weights, streamed.

For donors A (n layers) and B (m layers) of one architecture, the similarity of A's layer i and
B's layer j is the cosine of the angle between all of layer i's parameter tensors flattened
into one vector and layer j's. Per tensor kind (``self_attn.q_proj.weight``, …), a block of rows
of that tensor is read from every layer of both donors, stacked into an ``n × k`` and an
``m × k`` float32 matrix, and one matrix product ``A·Bᵀ`` adds its dot products (squared norms
likewise): no n×m passes over the weights, and at most a few blocks of ``chunk_bytes`` in memory
whatever the model's size. Rows are read from their byte range in the safetensors file alone; the
tensors a MODEL+LORA donor's adapter changes are read whole through the reader, which merges the
adapter in as mergekit does (never the base weights alone).

With a ``base`` of the same shape, the same runs over the deltas ``W − W_base`` (task vectors,
each donor's layer i against the base's layer i), and each donor's relative change per layer
``‖W − W_base‖ / ‖W_base‖`` is reported: which layers a finetune actually changed.

:func:`compare_layers` is a plain generator: :class:`SimilarityProgress` events, then
:class:`SimilarityDone`; setting ``cancel`` raises :class:`AnalysisCancelled` between blocks.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from merger_gui.core.donor import LAYER_PATTERN, DonorInfo
from merger_gui.core.dtypes import BY_CODE
from merger_gui.core.errors import DonorError, UserError

from .reader import SourceTensor, TensorReader, torch_dtype

if TYPE_CHECKING:
    import torch

__all__ = ["AnalysisCancelled", "LayerSimilarity", "SimilarityDone", "SimilarityProgress", "compare_layers",
           "layer_kinds"]

CHUNK_BYTES = 32 * 2**20  # float32 bytes of one donor's stacked block


class AnalysisCancelled(UserError):
    """The analysis was cancelled."""


@dataclass(frozen=True)
class LayerSimilarity:
    """The result: ``similarity[i][j]`` (A's layer i, B's layer j; None with one donor) and, with a
    base, ``relative_change[d][i]`` for each donor d."""

    donors: tuple[str, ...]
    num_layers: tuple[int, ...]
    similarity: tuple[tuple[float, ...], ...] | None
    relative_change: tuple[tuple[float, ...], ...] | None


@dataclass(frozen=True)
class SimilarityProgress:
    done: int  # blocks read so far
    total: int
    message: str


@dataclass(frozen=True)
class SimilarityDone:
    result: LayerSimilarity


def layer_kinds(donor: DonorInfo) -> dict[str, tuple[int, ...]]:
    """Tensor kind (the name after the layer number) → shape, checked equal in every layer.

    Raises:
        DonorError: the donor has no layers, or a kind's shape or presence differs between layers.
    """
    if donor.num_layers < 1:
        raise DonorError(f"donor {donor.ref} has no layers to compare")
    kinds: dict[str, tuple[int, ...]] = {}
    for layer in range(donor.num_layers):
        found = {_kind(t.name): t.shape for t in donor.layer_tensors(layer)}
        if layer == 0:
            kinds = found
        elif found != kinds:
            raise DonorError(f"donor {donor.ref}: layer {layer}'s tensors differ from layer 0's; "
                             "layers of different shapes cannot be compared")
    return kinds


def compare_layers(donors: Sequence[tuple[str, DonorInfo]], base: tuple[str, DonorInfo] | None = None,
                   cancel: threading.Event | None = None, chunk_bytes: int = CHUNK_BYTES
                   ) -> Iterator[SimilarityProgress | SimilarityDone]:
    """Layer-by-layer cosine similarity of two donors (and relative change from ``base``).

    Args:
        donors: One or two ``(name, facts)`` pairs with local weights; with one, only the relative
            change from ``base`` is computed.
        base: The common base, for task vectors and relative change.
        cancel: Set it to stop between blocks.
        chunk_bytes: float32 bytes of one donor's stacked block (memory bound).

    Raises:
        AnalysisCancelled: ``cancel`` was set.
        UserError: fewer than needed donors, no local weights, or different architectures.
    """
    if not donors or len(donors) > 2 or (len(donors) == 1 and base is None):
        raise UserError("weight similarity needs two donors, or one donor and --base")
    kinds = _common_kinds(donors, base)
    blocks = [(kind, rows) for kind, shape in kinds.items() for rows in _row_blocks(shape, donors, chunk_bytes)]
    sums = _Sums(donors, base)
    reader = TensorReader({name: info for name, info in (*donors, *([base] if base else []))})
    try:
        for done, (kind, rows) in enumerate(blocks):
            if cancel is not None and cancel.is_set():
                raise AnalysisCancelled("cancelled")
            yield SimilarityProgress(done, len(blocks), f"{kind} rows {rows.start}-{rows.stop - 1}")
            sums.add(reader, kind, rows)
    finally:
        reader.close()
    yield SimilarityProgress(len(blocks), len(blocks), "done")
    yield SimilarityDone(sums.result())


class _Sums:
    """Running dot products and squared norms over the blocks read so far (float64)."""

    def __init__(self, donors: Sequence[tuple[str, DonorInfo]], base: tuple[str, DonorInfo] | None) -> None:
        import torch

        self.donors, self.base = list(donors), base
        layers = [info.num_layers for _, info in donors]
        self.dot = torch.zeros(layers[0], layers[-1], dtype=torch.float64)
        self.norms = [torch.zeros(n, dtype=torch.float64) for n in layers]
        self.base_norm = torch.zeros(base[1].num_layers if base else 0, dtype=torch.float64)

    def add(self, reader: TensorReader, kind: str, rows: range) -> None:
        base = _stacked(reader, *self.base, kind, rows) if self.base else None
        stacks = []
        for name, info in self.donors:
            stack = _stacked(reader, name, info, kind, rows)
            if base is not None:
                stack -= base  # in place: a task vector costs no second block
            stacks.append(stack)
            self.norms[len(stacks) - 1] += stack.square().sum(dim=1, dtype=stack.dtype).double()
        if len(stacks) == 2:
            self.dot += (stacks[0] @ stacks[1].T).double()
        if base is not None:
            self.base_norm += base.square().sum(dim=1).double()

    def result(self) -> LayerSimilarity:
        names = tuple(name for name, _ in self.donors)
        layers = tuple(info.num_layers for _, info in self.donors)
        similarity = None
        if len(self.donors) == 2:
            scale = self.norms[0].sqrt()[:, None] * self.norms[1].sqrt()[None, :]
            cosine = (self.dot / scale).nan_to_num(0.0, 0.0, 0.0)  # a zero vector is like nothing
            similarity = tuple(tuple(float(v) for v in row) for row in cosine.clamp(-1, 1))
        change = None
        if self.base is not None:
            change = tuple(tuple(_ratio(d, b) for d, b in zip(norm.sqrt().tolist(), self.base_norm.sqrt().tolist()))
                           for norm in self.norms)
        return LayerSimilarity(names, layers, similarity, change)


def _ratio(delta: float, base: float) -> float:
    return delta / base if base > 0 else (0.0 if delta == 0 else math.inf)


def _kind(tensor_name: str) -> str:
    match = LAYER_PATTERN.match(tensor_name)
    return match["suffix"] if match else tensor_name


def _common_kinds(donors: Sequence[tuple[str, DonorInfo]], base: tuple[str, DonorInfo] | None
                  ) -> dict[str, tuple[int, ...]]:
    everyone = [*donors, *([base] if base else [])]
    for name, info in everyone:
        if info.path is None:
            raise UserError(f"donor {name} has no local weights ({info.kind}); weight similarity reads them")
    kinds = layer_kinds(everyone[0][1])
    for name, info in everyone[1:]:
        if layer_kinds(info) != kinds:
            raise UserError(f"donor {name} has other layer tensors than {everyone[0][0]} (another architecture "
                            "or size); only donors of the same architecture can be compared")
    if base is not None:
        for name, info in donors:
            if info.num_layers != base[1].num_layers:
                raise UserError(f"donor {name} has {info.num_layers} layers and base {base[0]} "
                                f"{base[1].num_layers}: deltas need the base's layer count")
    return kinds


def _row_blocks(shape: tuple[int, ...], donors: Sequence[tuple[str, DonorInfo]], chunk_bytes: int) -> list[range]:
    """Row ranges of a tensor of ``shape`` such that every layer's block of one donor fits ``chunk_bytes``."""
    rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, math.prod(shape))
    layers = max(info.num_layers for _, info in donors)
    step = max(1, chunk_bytes // (4 * layers * max(cols, 1)))
    return [range(r, min(rows, r + step)) for r in range(0, rows, step)]


def _stacked(reader: TensorReader, name: str, info: DonorInfo, kind: str, rows: range) -> torch.Tensor:
    """Rows ``rows`` of tensor ``kind`` of every layer of donor ``name``, flattened: layers × elements, float32."""
    import torch

    prefix = _prefix(info)
    stack: torch.Tensor | None = None
    for layer in range(info.num_layers):
        row = _read_rows(reader, reader.locate(name, f"{prefix}.{layer}.{kind}"), rows)
        if stack is None:  # filled in place: no list of parts beside the stack
            stack = torch.empty(info.num_layers, row.numel(), dtype=torch.float32)
        stack[layer] = row
    assert stack is not None  # every donor has at least one layer (layer_kinds)
    return stack


def _prefix(info: DonorInfo) -> str:
    match = LAYER_PATTERN.match(info.layer_tensors(0)[0].name)
    assert match is not None  # layer_tensors only holds names the pattern matched
    return match["prefix"]


def _read_rows(reader: TensorReader, source: SourceTensor, rows: range) -> torch.Tensor:
    """Rows ``rows`` of ``source`` as flat float32, read from their byte range alone when in safetensors."""
    import torch

    shape = source.info.shape
    cols = math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)
    span = reader.byte_range(source)
    if span is None:  # a .bin checkpoint (rare): the tensor is copied whole, then cut
        return reader.read(source).reshape(-1)[rows.start * cols:rows.stop * cols].float()
    size = BY_CODE[source.info.dtype].size
    start, length = span.offset + rows.start * cols * size, len(rows) * cols * size
    data = bytearray(length)
    view, done = memoryview(data), 0
    while done < length:
        chunk = os.preadv(span.handle.fileno(), [view[done:]], start + done)
        if not chunk:
            raise DonorError(f"{source.label}: {source.file} ends early (truncated file)")
        done += chunk
    return torch.frombuffer(data, dtype=torch_dtype(source.info.dtype)).float()
