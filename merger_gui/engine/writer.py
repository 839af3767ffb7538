"""Incremental sharded safetensors writer with a layout planned before any data is read.

Names, dtypes and shapes of every output tensor are known from the plan, so shard
boundaries, headers and offsets are computed up front. Each shard file gets its header
first, then tensors are appended in plan order as they are produced: nothing is held
back in memory and no byte is written twice. A safetensors file is an 8-byte
little-endian header length, the JSON header (padded with spaces to 8 bytes) and the
tensor bytes back to back.

A copied tensor moves file to file inside the kernel, spliced through a pipe in 64 KiB
pieces aligned to the output file, the page-cache work of ``cp``: each piece fills one
whole 64 KiB folio. ``copy_file_range`` splices 64 KiB pieces that start wherever the
tensor does; as the output's offsets never line up with the donor's (the headers
differ), it fills small, partial folios and is ~40% slower. Larger pieces make the
kernel allocate larger folios: faster on fresh memory, but 3-5x slower once memory is
fragmented (as right after a mergekit run).

Each shard file is preallocated at its final size before its first byte is written (Linux
``fallocate``): the filesystem reserves its blocks in one call instead of page by page,
which makes the copy ~15% faster than ``cp`` on ext4, and a disk too full for the shard
fails there, before any data is copied.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from merger_gui.core.donor import TensorInfo
from merger_gui.core.safe_files import DonorHandle

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = 5_000_000_000
COPY_CHUNK = 16 * 1024 * 1024
SPLICE_CHUNK = 64 * 1024
PAGE = 4096
PIPE_SIZE = 1024 * 1024  # the largest pipe an unprivileged process may ask for by default
# splice or copy_file_range cannot serve these (other filesystem, old kernel…): copy another way.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ETXTBSY, errno.EBADF}


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[TensorInfo, ...]

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def header(self) -> bytes:
        """The 8-byte length prefix and the padded JSON header of this shard."""
        entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.tensors:
            entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(entries, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw


def plan_shards(tensors: Sequence[TensorInfo], shard_size: int) -> tuple[Shard, ...]:
    """Split ``tensors`` (in order) into shards of at most ``shard_size`` data bytes each.

    A tensor larger than ``shard_size`` gets a shard of its own, as in mergekit.
    """
    groups: list[list[TensorInfo]] = []
    size = 0
    for t in tensors:
        if not groups or (size + t.nbytes > shard_size and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) <= 1:
        return (Shard(SINGLE_FILE, tuple(groups[0]) if groups else ()),)
    n = len(groups)
    return tuple(Shard(f"model-{k + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for k, g in enumerate(groups))


def planned_bytes(tensors: Sequence[TensorInfo], shard_size: int) -> int:
    """Bytes the weight files will take on disk, headers included."""
    return sum(len(s.header()) + s.data_bytes for s in plan_shards(tensors, shard_size))


def _preallocate(handle: BinaryIO, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``handle``'s file where the filesystem can (no-op elsewhere).

    Raises:
        OSError: ENOSPC when the disk lacks room for them.
    """
    fallocate = _fallocate()
    if fallocate is None or fallocate(handle.fileno(), 0, 0, size) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.ENOSPC:
        raise OSError(code, os.strerror(code), getattr(handle, "name", None))
    # Any other refusal (a filesystem without fallocate, an interrupted call): write without it.


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's raw ``fallocate(fd, mode, offset, len)`` (never glibc's byte-writing emulation), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):  # not Linux, or no such libc symbol
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def _write_all(handle: BinaryIO, data: memoryview) -> None:
    """Write every byte of ``data`` (unbuffered writes may be partial)."""
    done = 0
    while done < len(data):
        done += handle.write(data[done:]) or 0


class _Pipe:
    """A pipe to splice file bytes through, enlarged where allowed; closed by :meth:`close`."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        try:
            self.capacity = fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # the default pipe still works, in more splices
            self.capacity = fcntl.fcntl(self.write_end, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


def _splice_range(source: BinaryIO, offset: int, length: int, target: BinaryIO, pipe: _Pipe) -> int:
    """Append up to ``length`` bytes of ``source`` from ``offset`` to ``target`` through ``pipe``.

    The pipe is filled in one call (it only takes references to the donor's pages), up to
    an output piece boundary, and drained in pieces that end on the output's
    ``SPLICE_CHUNK`` boundaries (each fills one folio).

    Returns the bytes copied: fewer only when splice is refused (the pipe is left empty).

    Raises:
        EOFError: ``source`` ends first.
    """
    done = 0
    position = target.tell()
    while done < length:
        start = position + done
        room = pipe.capacity - PAGE  # an unaligned range touches one page more than its length
        fill = (start + room) // SPLICE_CHUNK * SPLICE_CHUNK - start  # up to a piece boundary
        if fill <= 0:  # a pipe smaller than a piece
            fill = room
        try:
            n = os.splice(source.fileno(), pipe.write_end, min(fill, length - done), offset_src=offset + done)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            return done
        if n == 0:
            raise EOFError
        while n:
            step = min(SPLICE_CHUNK - (position + done) % SPLICE_CHUNK, n)
            try:
                moved = os.splice(pipe.read_end, target.fileno(), step)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                while n:  # the target refuses splice: write out what the pipe holds
                    chunk = os.read(pipe.read_end, n)
                    _write_all(target, memoryview(chunk))
                    n -= len(chunk)
                    done += len(chunk)
                return done
            n -= moved
            done += moved
    return done


def _copy_range(source: DonorHandle, offset: int, length: int, target: BinaryIO,
                pipe: _Pipe | None = None) -> None:
    """Append ``length`` bytes of ``source`` from ``offset`` to ``target``, in the kernel when it can.

    Raises:
        EOFError: ``source`` ends before ``length`` bytes.
    """
    done = 0
    if pipe is not None:
        done = _splice_range(source, offset, length, target, pipe)
    if done < length and hasattr(os, "copy_file_range"):
        try:
            while done < length:
                n = os.copy_file_range(source.fileno(), target.fileno(), length - done, offset + done)
                if n == 0:
                    raise EOFError
                done += n
            return
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
    buffer = bytearray(min(COPY_CHUNK, max(length - done, 1)))
    while done < length:
        source.seek(offset + done)
        n = source.readinto(memoryview(buffer)[: min(len(buffer), length - done)])
        if not n:
            raise EOFError
        _write_all(target, memoryview(buffer)[:n])
        done += n


class ShardedWriter:
    """Writes planned tensors, in order, into the shards of ``folder``.

    Call :meth:`write` or :meth:`copy` once per tensor in layout order, then :meth:`close`.
    """

    def __init__(self, folder: str | Path, tensors: Sequence[TensorInfo],
                 shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        self.folder = Path(folder)
        self.shards = plan_shards(tensors, shard_size)
        self._queue = [(shard, t) for shard in self.shards for t in shard.tensors]
        self._next = 0
        self._shard: Shard | None = None
        self._handle: BinaryIO | None = None
        self._pipe: _Pipe | None = None
        self.bytes_written = 0

    @property
    def current_file(self) -> Path | None:
        return self.folder / self._shard.file if self._shard else None

    def write(self, name: str, data: memoryview) -> None:
        """Append the bytes of tensor ``name``; their length must match the layout."""
        layout = self._start(name)
        if data.nbytes != layout.nbytes:
            raise ValueError(f"tensor {name!r}: {data.nbytes} bytes produced, {layout.nbytes} planned")
        _write_all(self._handle, data.cast("B"))  # type: ignore[arg-type]
        self.bytes_written += layout.nbytes

    def copy(self, name: str, source: DonorHandle, offset: int) -> None:
        """Append tensor ``name`` by copying its planned byte count from ``source`` at ``offset``.

        Raises:
            EOFError: ``source`` ends before the tensor does.
        """
        layout = self._start(name)
        if self._pipe is None and hasattr(os, "splice"):
            self._pipe = _Pipe()
        _copy_range(source, offset, layout.nbytes, self._handle, self._pipe)  # type: ignore[arg-type]
        self.bytes_written += layout.nbytes

    def close(self) -> None:
        """Finish the last shard and write the index when there are several shards."""
        if self._next != len(self._queue):
            missing = self._queue[self._next][1].name
            raise ValueError(f"tensor {missing!r} was never written")
        if not self._queue:
            self._open(self.shards[0])
        self._close_handle()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.data_bytes for s in self.shards)},
                "weight_map": {t.name: s.file for s in self.shards for t in s.tensors},
            }
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        """Close the open file without completing it (the caller removes the folder)."""
        self._close_handle()

    def _start(self, name: str) -> TensorInfo:
        if self._next >= len(self._queue) or self._queue[self._next][1].name != name:
            expected = self._queue[self._next][1].name if self._next < len(self._queue) else "nothing"
            raise ValueError(f"tensor {name!r} written out of order; expected {expected!r}")
        shard, layout = self._queue[self._next]
        if shard is not self._shard:
            self._open(shard)
        self._next += 1
        return layout

    def _open(self, shard: Shard) -> None:
        self._close_handle()
        self._shard = shard
        self._handle = (self.folder / shard.file).open("wb", buffering=0)
        header = shard.header()
        _preallocate(self._handle, len(header) + shard.data_bytes)
        _write_all(self._handle, memoryview(header))

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
