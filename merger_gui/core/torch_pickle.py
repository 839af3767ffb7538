"""List the tensors of a PyTorch ``.bin`` checkpoint without torch and without running its pickle.

``torch.save`` writes a zip holding ``<archive>/data.pkl`` and one ``<archive>/data/<key>``
record per storage. The pickle only needs a handful of torch globals to rebuild a state
dict; a restricted unpickler maps exactly those to inert stand-ins that record dtype and
shape, and refuses every other global, so a hostile file cannot execute code.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .donor import TensorInfo
from .dtypes import BY_CODE, DTYPES
from .errors import DonorError

MAX_PICKLE_BYTES = 256 * 1024 * 1024

# Typed storage classes of the legacy (v2) tensor layout → safetensors dtype code.
STORAGE_CODES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}
# torch dtype globals used by the v3 layout (untyped storage + explicit dtype): torch.<name>.
DTYPE_GLOBALS = {d.torch_name: d.code for d in DTYPES}


@dataclass(frozen=True, slots=True)
class _StorageType:
    code: str | None  # None: untyped storage, sized in bytes


@dataclass(frozen=True, slots=True)
class _DType:
    code: str


@dataclass(frozen=True, slots=True)
class _Storage:
    code: str | None
    key: str
    numel: int


@dataclass(frozen=True, slots=True)
class _Tensor:
    dtype: str
    shape: tuple[int, ...]
    storage: _Storage
    offset: int
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _Tensor:
    if not isinstance(storage, _Storage) or storage.code is None:
        raise DonorError("tensor without a typed storage")
    return _tensor(storage, storage.code, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *_: Any) -> _Tensor:
    if not isinstance(storage, _Storage) or not isinstance(dtype, _DType):
        raise DonorError("tensor without a storage or dtype")
    return _tensor(storage, dtype.code, offset, size, stride)


def _tensor(storage: _Storage, code: str, offset: Any, size: Any, stride: Any) -> _Tensor:
    if not (_ints(size) and _ints(stride) and len(size) == len(stride) and _ints((offset,))):
        raise DonorError("tensor with an invalid size, stride or offset")
    return _Tensor(code, tuple(size), storage, offset, tuple(stride))


def _ints(values: Any) -> bool:
    return isinstance(values, tuple | list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType(None),
    ("torch", "UntypedStorage"): _StorageType(None),
    **{("torch", name): _StorageType(code) for name, code in STORAGE_CODES.items()},
    **{("torch", name): _DType(code) for name, code in DTYPE_GLOBALS.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and records storages."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DonorError(f"refusing to load pickled object {module}.{name}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise DonorError(f"unexpected persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _ints((numel,)):
            raise DonorError("malformed storage record")
        return _Storage(storage_type.code, key, numel)


@dataclass(frozen=True, slots=True)
class StoredTensor:
    """Where a checkpoint's tensor lies: its storage record, first element and strides (in elements)."""

    info: TensorInfo
    record: zipfile.ZipInfo
    offset: int
    stride: tuple[int, ...]


def read_torch_checkpoint(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name → :class:`TensorInfo` (``file`` = the file's name) of a ``torch.save`` zip.

    Raises:
        DonorError: the file is not a zip checkpoint, references anything beyond plain
            tensors, or describes tensors larger than the storages it contains.
    """
    return {name: stored.info for name, stored in read_torch_layout(path).items()}


def read_torch_layout(path: str | Path, handle: BinaryIO | None = None) -> dict[str, StoredTensor]:
    """Tensor name → :class:`StoredTensor` of a ``torch.save`` zip (read from ``handle`` when given).

    Raises:
        DonorError: as :func:`read_torch_checkpoint`.
    """
    file = Path(path)
    try:
        with zipfile.ZipFile(handle or file) as archive:
            entries = {info.filename: info for info in archive.infolist()}
            pickle_name = next((n for n in entries if n.endswith("data.pkl") and n.count("/") == 1), None)
            if pickle_name is None:
                raise DonorError("no data.pkl in the archive")
            if entries[pickle_name].file_size > MAX_PICKLE_BYTES:
                raise DonorError("data.pkl is implausibly large")
            with archive.open(pickle_name) as stream:
                state = _load(stream)
            prefix = pickle_name.rsplit("/", 1)[0]
            return _tensor_infos(state, entries, prefix, file.name)
    except zipfile.BadZipFile:
        raise DonorError(f"{file}: not a zip-format PyTorch checkpoint (legacy .bin files are not supported)") \
            from None
    except OSError as exc:
        raise DonorError(f"cannot read {file}: {exc.strerror or exc}") from None
    except DonorError as exc:
        raise DonorError(f"{file}: {exc}") from None


def _load(stream: IO[bytes]) -> Any:
    try:
        return _RestrictedUnpickler(stream).load()
    except DonorError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed opcode stream fails in any way; one line, not a traceback
        raise DonorError(f"cannot unpickle data.pkl ({type(exc).__name__}: {exc})") from None


def _tensor_infos(state: Any, entries: dict[str, zipfile.ZipInfo], prefix: str, file_name: str) \
        -> dict[str, StoredTensor]:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DonorError("the checkpoint is not a state dict")
    tensors: dict[str, StoredTensor] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, _Tensor):
            raise DonorError(f"entry {name!r} is not a tensor")
        record = _check_storage(name, tensor, entries, prefix)
        tensors[name] = StoredTensor(TensorInfo(name, tensor.shape, tensor.dtype, file_name), record, tensor.offset,
                                     tensor.stride)
    return tensors


def _check_storage(name: str, tensor: _Tensor, entries: dict[str, zipfile.ZipInfo], prefix: str) -> zipfile.ZipInfo:
    record = entries.get(f"{prefix}/data/{tensor.storage.key}")
    if record is None:
        raise DonorError(f"tensor {name!r} refers to a missing storage {tensor.storage.key!r}")
    item = BY_CODE[tensor.dtype].size
    unit = 1 if tensor.storage.code is None else item
    if record.file_size != tensor.storage.numel * unit:
        raise DonorError(f"storage of tensor {name!r} has the wrong size")
    if 0 not in tensor.shape:  # else no element to bound
        last = tensor.offset + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride))
        if (last + 1) * item > record.file_size:
            raise DonorError(f"tensor {name!r} extends past the end of its storage")
    return record
