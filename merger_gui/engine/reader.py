"""Lazy, bounded-memory reading of donor tensors from safetensors and PyTorch ``.bin`` files.

A safetensors tensor is read from its byte range alone into a fresh tensor (``readinto``),
never memory-mapped: a donor file truncated while a mapped tensor is in use (a download
restarted, a disk cleaned up) kills the process with SIGBUS, which Python cannot catch,
leaving its partial output behind. A read instead ends early and becomes a one-line
:class:`DonorError` naming the file. The price, on the SLERP of ``benchmarks/bench_merge.py
--layers 8`` (two 0.32 GB donors, 2 busy cores, interleaved runs against a mapping build):
2.59 vs 2.33 s wall and 2.65 vs 2.49 s CPU (best of 8), +6 to +21 % CPU over four series,
the same peak RSS; the fresh pages a read fills cost what mapping the page cache does not.
A tensor can also be handed to the writer as a byte range to copy file to file (a truncated
file ends that copy cleanly too).
``.bin`` checkpoints (``torch.save`` zips) are read the same way, not by ``torch.load(mmap=True)``,
which maps the whole archive (a truncation was a SIGBUS): the pickle is read by core's
restricted unpickler (no code runs), and each tensor's bytes from its storage record, found by
the record's local zip header, into a fresh tensor: every tensor of a 0.31 GB ``.bin`` in
0.14 s wall against 0.38 s for ``torch.load`` and a copy of each (best of 6, page cache warm).
Every file is opened once and cached.
torch is imported only to read a tensor into memory, so a byte-for-byte copy never imports it.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.dtypes import torch_name
from merger_gui.core.errors import DonorError
from merger_gui.core.inspect import read_weight_map
from merger_gui.core.safe_files import DonorHandle, is_present, open_donor_file
from merger_gui.core.safetensors_header import check_header_length, parse_safetensors_header
from merger_gui.core.torch_pickle import StoredTensor, read_torch_layout

if TYPE_CHECKING:
    import torch

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``BF16`` → ``torch.bfloat16``)."""
    import torch

    return getattr(torch, torch_name(code))


@dataclass(frozen=True)
class ByteRange:
    """Where one tensor's raw bytes lie inside an open safetensors file."""

    handle: DonorHandle
    offset: int
    length: int


@dataclass(frozen=True)
class SourceTensor:
    """One donor tensor, located but not read: what it is, and where its bytes lie."""

    model: str
    info: TensorInfo  # name, shape and stored dtype, as the file's header (or archive) says
    file: Path
    offset: int | None  # absolute byte offset in a safetensors file; None for .bin

    @property
    def label(self) -> str:
        return f"{self.info.name!r} of donor {self.model}"


class _SafetensorsFile:
    """The parsed header and an unbuffered handle of one safetensors file."""

    def __init__(self, path: Path, model: str) -> None:
        try:
            self.handle: DonorHandle = open_donor_file(path, buffering=0)  # a regular file inside the donor
            size = os.fstat(self.handle.fileno()).st_size
            prefix = self.handle.read(8)
            if len(prefix) < 8:
                raise DonorError(f"donor {model}: {path} is not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            check_header_length(length, size - 8, f"donor {model}: {path}")
            raw = self.handle.read(length)
        except OSError as exc:
            raise DonorError(f"donor {model}: cannot read {path}: {exc.strerror or exc}") from None
        # Validates dtypes, shapes and that the offsets tile the data exactly (a truncated file fails).
        self.infos = parse_safetensors_header(raw, size - 8 - length, f"donor {model}: {path}",
                                               file_name=path.name)
        header = json.loads(raw)
        base = 8 + length
        self.offsets = {name: base + entry["data_offsets"][0]
                        for name, entry in header.items() if name != "__metadata__"}

    def close(self) -> None:
        self.handle.close()


class _CheckpointFile:
    """The tensor layout and an unbuffered handle of one ``torch.save`` zip."""

    def __init__(self, path: Path, model: str) -> None:
        self.path, self.model = path, model
        self.handle: DonorHandle = open_donor_file(path, buffering=0)  # a regular file inside the donor
        try:
            self.tensors = read_torch_layout(path, self.handle)
        except DonorError as exc:
            self.handle.close()
            raise DonorError(f"donor {model}: {exc}") from None
        self._starts: dict[str, int] = {}

    def read(self, source: SourceTensor) -> torch.Tensor:
        """``source``'s elements, read from its storage record into a fresh tensor."""
        import torch

        stored = self.tensors[source.info.name]
        shape, dtype = source.info.shape, torch_dtype(source.info.dtype)
        if 0 in shape:
            return torch.empty(shape, dtype=dtype)
        span = 1 + sum((d - 1) * s for d, s in zip(shape, stored.stride))  # elements from the first to the last
        flat = torch.empty(span, dtype=dtype)
        start = self._data_start(stored.record, source) + stored.offset * flat.element_size()
        _fill(self.handle, start, flat, source)
        return torch.as_strided(flat, shape, stored.stride).contiguous()

    def _data_start(self, record: zipfile.ZipInfo, source: SourceTensor) -> int:
        """Where the bytes of storage ``record`` begin: after its local header, which the zip's directory
        does not give (torch pads it to align the data)."""
        if record.filename not in self._starts:
            if record.compress_type != zipfile.ZIP_STORED:
                raise DonorError(f"{source.label}: its storage in {self.path} is compressed; "
                                 "save the checkpoint again with torch.save or as safetensors")
            self.handle.seek(record.header_offset)
            header = self.handle.read(30)
            if len(header) < 30:
                raise DonorError(f"{source.label}: {self.path} ends early (truncated file)")
            if header[:4] != b"PK\x03\x04":
                raise DonorError(f"{source.label}: {self.path} changed since it was read (no zip record where "
                                 "its directory says)")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            self._starts[record.filename] = record.header_offset + 30 + name_length + extra_length
        return self._starts[record.filename]

    def close(self) -> None:
        self.handle.close()


class TensorReader:
    """Reads the tensors of a set of donors on demand; one open handle per file, cached.

    Args:
        donors: Donor facts by the recipe's model name; each needs a local ``path``.
    """

    def __init__(self, donors: Mapping[str, DonorInfo]) -> None:
        from .lora import donor_adapters

        self._donors = dict(donors)
        self._adapters = donor_adapters(donors)  # MODEL+LORA donors: applied to each tensor read
        self._safetensors: dict[Path, _SafetensorsFile] = {}
        self._checkpoints: dict[Path, _CheckpointFile] = {}
        self._weight_maps: dict[str, dict[str, str]] = {}

    def add_donor(self, model: str, donor: DonorInfo) -> None:
        """Make (or replace) ``model`` readable, e.g. an intermediate stage's output."""
        self._donors[model] = donor
        self._weight_maps.pop(model, None)

    def locate(self, model: str, name: str) -> SourceTensor:
        """Find tensor ``name`` of donor ``model`` and check its file's header.

        Raises:
            DonorError: unknown donor, missing or corrupt file, or the tensor is not there.
        """
        donor = self._donors.get(model)
        if donor is None or donor.path is None:
            raise DonorError(f"donor {model} has no local weights to read")
        file = Path(donor.path) / self._file_of(model, donor, name)
        if file.suffix == ".safetensors":
            entry = self._open_safetensors(file, model)
            info = entry.infos.get(name)
            if info is None:
                raise DonorError(f"donor {model}: tensor {name!r} is missing from {file.name}")
            return SourceTensor(model, info, file, entry.offsets[name])
        stored: StoredTensor | None = self._open_checkpoint(file, model).tensors.get(name)
        if stored is None:
            raise DonorError(f"donor {model}: tensor {name!r} is missing from {file.name}")
        return SourceTensor(model, stored.info, file, None)

    def byte_range(self, source: SourceTensor) -> ByteRange | None:
        """The raw bytes of a safetensors tensor, for a copy without conversion; None for ``.bin``."""
        adapter = self._adapters.get(source.model)
        if source.offset is None or adapter is not None and adapter.targets(source.info.name):
            return None
        return ByteRange(self._safetensors[source.file].handle, source.offset, source.info.nbytes)

    def read(self, source: SourceTensor) -> torch.Tensor:
        """The tensor itself, in its stored dtype, in CPU memory of its own (writes to it never
        reach the donor); a MODEL+LORA donor's with its adapter merged in.

        Raises:
            DonorError: the file cannot be read (e.g. truncated since it was inspected).
        """
        tensor = self._read_stored(source)
        adapter = self._adapters.get(source.model)
        return adapter.apply(source.info.name, tensor) if adapter is not None else tensor

    def _read_stored(self, source: SourceTensor) -> torch.Tensor:
        offset = source.offset
        try:
            if offset is None:
                return self._checkpoints[source.file].read(source)
            import torch

            tensor = torch.empty(source.info.shape, dtype=torch_dtype(source.info.dtype))
            _fill(self._safetensors[source.file].handle, offset, tensor, source)
            return tensor
        except OSError as exc:
            raise DonorError(f"{source.label}: cannot read {source.file}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close every open file."""
        for file in self._safetensors.values():
            file.close()
        for checkpoint in self._checkpoints.values():
            checkpoint.close()
        self._safetensors.clear()
        self._checkpoints.clear()

    def _file_of(self, model: str, donor: DonorInfo, name: str) -> str:
        info = donor.tensor(name)
        if info is not None and info.file:
            return info.file
        weight_map = self._weight_map(model, donor)
        if name not in weight_map:
            raise DonorError(f"donor {model}: tensor {name!r} is missing")
        return weight_map[name]

    def _weight_map(self, model: str, donor: DonorInfo) -> dict[str, str]:
        if model not in self._weight_maps:
            folder = Path(donor.path or "")
            index = next((folder / n for n in INDEX_FILES if is_present(folder / n)), None)
            if index is not None:
                self._weight_maps[model] = read_weight_map(index)
            else:
                self._weight_maps[model] = self._scan(model, folder)
        return self._weight_maps[model]

    def _scan(self, model: str, folder: Path) -> dict[str, str]:
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise DonorError(f"donor {model}: {folder} has no .safetensors or .bin weights")
        names: dict[str, str] = {}
        for file in files:
            keys: Iterable[str] = (self._open_safetensors(file, model).infos if file.suffix == ".safetensors"
                                   else self._open_checkpoint(file, model).tensors)
            names.update(dict.fromkeys(keys, file.name))
        return names

    def _open_safetensors(self, file: Path, model: str) -> _SafetensorsFile:
        if file not in self._safetensors:
            if not is_present(file):
                raise DonorError(f"donor {model}: weight file {file} is missing")
            self._safetensors[file] = _SafetensorsFile(file, model)
        return self._safetensors[file]

    def _open_checkpoint(self, file: Path, model: str) -> _CheckpointFile:
        if file not in self._checkpoints:
            if not is_present(file):
                raise DonorError(f"donor {model}: weight file {file} is missing")
            self._checkpoints[file] = _CheckpointFile(file, model)
        return self._checkpoints[file]


def _fill(handle: DonorHandle, offset: int, tensor: torch.Tensor, source: SourceTensor) -> None:
    """Read the bytes of the contiguous ``tensor`` from ``offset`` of ``handle`` (``source``'s file).

    Raises:
        DonorError: the file ends before them (truncated since it was inspected).
    """
    import torch

    view = tensor.reshape(-1).view(torch.uint8).numpy().data
    if os.fstat(handle.fileno()).st_size < offset + len(view):
        raise DonorError(f"{source.label}: {source.file} ends early (truncated file)")
    handle.seek(offset)
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise DonorError(f"{source.label}: {source.file} ends early (truncated file)")
        done += n
