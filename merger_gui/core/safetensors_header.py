"""Read and validate the JSON header of a safetensors file without touching its tensor data.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``) and the tensor bytes.
Headers come from untrusted downloads, so every field is checked and the length is bounded
before anything is read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .donor import TensorInfo
from .dtypes import BY_CODE
from .errors import DonorError
from .safe_files import open_donor_file, parse_json

MAX_HEADER_BYTES = 100 * 1024 * 1024
# A real file holds at most a few thousand tensors (sharded giants spread ~100k over many files).
MAX_TENSORS = 65_536


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name → :class:`TensorInfo` (``file`` = the file's name) of one safetensors file.

    Raises:
        DonorError: the file is missing, truncated, or its header is malformed or hostile.
    """
    file = Path(path)
    try:
        with open_donor_file(file) as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise DonorError(f"{file}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            check_header_length(length, size - 8, str(file))
            raw = handle.read(length)
    except OSError as exc:
        raise DonorError(f"cannot read {file}: {exc.strerror or exc}") from None
    if len(raw) != length:
        raise DonorError(f"{file}: safetensors header is truncated")
    return parse_safetensors_header(raw, size - 8 - length, str(file), file_name=file.name)


def check_header_length(length: int, available: int, source: str) -> None:
    """Reject a header length larger than the data that follows it or than a sane cap."""
    if length > MAX_HEADER_BYTES:
        raise DonorError(f"{source}: safetensors header length {length} exceeds the {MAX_HEADER_BYTES} byte limit")
    if length > available:
        raise DonorError(f"{source}: safetensors header length {length} is larger than the file")
    if length < 2:
        raise DonorError(f"{source}: safetensors header is empty")


def parse_safetensors_header(
    raw: bytes, data_size: int | None, source: str, *, file_name: str | None = None
) -> dict[str, TensorInfo]:
    """Validate the header JSON ``raw`` and return its tensors.

    Args:
        raw: The header bytes (without the 8-byte length prefix).
        data_size: Bytes of tensor data after the header, when known; offsets must fit it.
        source: The file or URL named in error messages.
        file_name: Stored in each :class:`TensorInfo`'s ``file``.
    """
    # Every tensor entry is an object: count braces before parsing builds millions of them.
    if raw.count(b"{") > MAX_TENSORS + 2:
        raise DonorError(f"{source}: safetensors header describes more than {MAX_TENSORS:,} tensors")
    header = parse_json(raw, f"{source}: safetensors header")
    if not isinstance(header, dict):
        raise DonorError(f"{source}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise DonorError(f"{source}: safetensors __metadata__ is not an object")
    if len(header) > MAX_TENSORS:
        raise DonorError(f"{source}: safetensors header describes more than {MAX_TENSORS:,} tensors")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, begin, end = _tensor_entry(name, entry, source, file_name)
        tensors[name] = info
        spans.append((begin, end, name))
    _check_spans(spans, data_size, source)
    return tensors


def _tensor_entry(name: str, entry: Any, source: str, file_name: str | None) -> tuple[TensorInfo, int, int]:
    if not isinstance(entry, Mapping):
        raise DonorError(f"{source}: tensor {name!r} has no dtype/shape/offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in BY_CODE:
        raise DonorError(f"{source}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise DonorError(f"{source}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise DonorError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise DonorError(f"{source}: tensor {name!r} ends before it begins")
    info = TensorInfo(name, tuple(shape), dtype, file_name)
    if end - begin != info.nbytes:
        raise DonorError(
            f"{source}: tensor {name!r} spans {end - begin} bytes but {dtype} {tuple(shape)} needs {info.nbytes}"
        )
    return info, begin, end


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_spans(spans: list[tuple[int, int, str]], data_size: int | None, source: str) -> None:
    # The format stores tensors back to back from offset 0: any gap or overlap is corruption.
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise DonorError(f"{source}: tensor {name!r} at offset {begin} {problem}")
        position = end
    if data_size is not None and position > data_size:
        raise DonorError(f"{source}: tensor data ends at byte {position}, past the end of the file ({data_size})")
    if data_size is not None and position < data_size:
        raise DonorError(f"{source}: {data_size - position} bytes after the last tensor are not described")
