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
``.bin`` checkpoints are loaded with ``torch.load(weights_only=True, mmap=True)``: no code
runs and only the storages actually used are paged in (such a file truncated during a merge
still ends it with SIGBUS: torch maps the whole archive). Every file is opened once and cached.
torch is imported only to read a tensor into memory or to load a ``.bin`` file, so a
byte-for-byte copy never imports it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.dtypes import DTYPES, torch_name
from merger_gui.core.errors import DonorError
from merger_gui.core.inspect import read_weight_map
from merger_gui.core.safe_files import DonorHandle, donor_file, is_present, open_donor_file
from merger_gui.core.safetensors_header import check_header_length, parse_safetensors_header

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
        self._checkpoints: dict[Path, Mapping[str, torch.Tensor]] = {}
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
        import torch  # .bin checkpoints are torch archives

        tensor = self._open_checkpoint(file, model).get(name)
        if not isinstance(tensor, torch.Tensor):
            raise DonorError(f"donor {model}: tensor {name!r} is missing from {file.name}")
        code = next((d.code for d in DTYPES if getattr(torch, d.torch_name, None) == tensor.dtype), None)
        if code is None:
            raise DonorError(f"donor {model}: tensor {name!r} has unsupported dtype {tensor.dtype}")
        return SourceTensor(model, TensorInfo(name, tuple(tensor.shape), code, file.name), file, None)

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
        if offset is None:
            return self._checkpoints[source.file][source.info.name].clone()
        handle = self._safetensors[source.file].handle
        try:
            if os.fstat(handle.fileno()).st_size < offset + source.info.nbytes:
                raise DonorError(f"{source.label}: {source.file} ends early (truncated file)")
            return _read_copy(handle, offset, source)
        except OSError as exc:
            raise DonorError(f"{source.label}: cannot read {source.file}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close every open file."""
        for entry in self._safetensors.values():
            entry.close()
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
                                   else self._open_checkpoint(file, model))
            names.update(dict.fromkeys(keys, file.name))
        return names

    def _open_safetensors(self, file: Path, model: str) -> _SafetensorsFile:
        if file not in self._safetensors:
            if not is_present(file):
                raise DonorError(f"donor {model}: weight file {file} is missing")
            self._safetensors[file] = _SafetensorsFile(file, model)
        return self._safetensors[file]

    def _open_checkpoint(self, file: Path, model: str) -> Mapping[str, Any]:
        if file not in self._checkpoints:
            if not is_present(file):
                raise DonorError(f"donor {model}: weight file {file} is missing")
            donor_file(file)  # a regular file inside the donor, not a link out of it
            import torch

            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
                raise DonorError(f"donor {model}: cannot load {file.name}: {_one_line(exc)}") from None
            if not isinstance(state, Mapping):
                raise DonorError(f"donor {model}: {file.name} does not hold a state dict")
            self._checkpoints[file] = state
        return self._checkpoints[file]


def _read_copy(handle: DonorHandle, offset: int, source: SourceTensor) -> torch.Tensor:
    """``source`` (at ``offset``) read into a fresh tensor."""
    import torch

    tensor = torch.empty(source.info.shape, dtype=torch_dtype(source.info.dtype))
    view = tensor.reshape(-1).view(torch.uint8).numpy().data
    handle.seek(offset)
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise DonorError(f"{source.label}: {source.file} ends early (truncated file)")
        done += n
    return tensor


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
