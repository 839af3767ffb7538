"""The writer's file-to-file copy: splice through a pipe, with fallbacks that give the same bytes."""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np
import pytest
from safetensors import safe_open

from merger_gui.core.donor import TensorInfo
from merger_gui.engine import writer as writer_module
from merger_gui.engine.writer import ShardedWriter

# Odd offsets and lengths, one range longer than the pipe, so every chunking path is taken.
RANGES = [(13, 5), (4099, 3 * 1024 * 1024 + 7), (1, 4096), (200_000, 1)]


@pytest.fixture
def source(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 4 * 1024 * 1024, dtype=np.uint8).tobytes()
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path, data


def copy_ranges(source, target_path, pipe):
    path, data = source
    with path.open("rb", buffering=0) as handle, target_path.open("wb", buffering=0) as target:
        target.write(b"header")
        for offset, length in RANGES:
            writer_module._copy_range(handle, offset, length, target, pipe)
    return b"header" + b"".join(data[o:o + n] for o, n in RANGES)


def refuse(*_args, **_kwargs):
    raise OSError(errno.EINVAL, "Invalid argument")


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice is Linux-only")
def test_splice_copies_exact_bytes(source, tmp_path):
    pipe = writer_module._Pipe()
    try:
        expected = copy_ranges(source, tmp_path / "out", pipe)
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == expected


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice is Linux-only")
def test_target_refusing_splice_keeps_what_the_pipe_holds(source, tmp_path, monkeypatch):
    real_splice = os.splice
    pipe = writer_module._Pipe()

    def splice_in_only(src, dst, count, **kwargs):
        if src == pipe.read_end:
            refuse()
        return real_splice(src, dst, count, **kwargs)

    monkeypatch.setattr(os, "splice", splice_in_only)
    try:
        expected = copy_ranges(source, tmp_path / "out", pipe)
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == expected


@pytest.mark.parametrize("refused", [("splice",), ("splice", "copy_file_range")])
def test_refused_kernel_copies_fall_back(source, tmp_path, monkeypatch, refused):
    for name in refused:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    pipe = writer_module._Pipe()
    try:
        expected = copy_ranges(source, tmp_path / "out", pipe)
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == expected


@pytest.mark.parametrize("refused", [(), ("splice",), ("splice", "copy_file_range")])
def test_copy_past_the_end_raises_eof(source, tmp_path, monkeypatch, refused):
    for name in refused:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    path, data = source
    pipe = writer_module._Pipe()
    try:
        with path.open("rb", buffering=0) as handle, (tmp_path / "out").open("wb", buffering=0) as target:
            with pytest.raises(EOFError):
                writer_module._copy_range(handle, len(data) - 10, 20, target, pipe)
    finally:
        pipe.close()


def test_copied_shards_are_valid_and_leave_no_open_files(tmp_path):
    values = {f"t{i}": np.arange(i * 1000, i * 1000 + 777, dtype=np.float16) for i in range(6)}
    layouts = [TensorInfo(name, v.shape, "F16") for name, v in values.items()]
    (tmp_path / "donor").mkdir()
    donor = ShardedWriter(tmp_path / "donor", layouts)
    for layout in layouts:
        donor.write(layout.name, memoryview(values[layout.name].view(np.uint8)))
    donor.close()
    header_end = 8 + int.from_bytes((tmp_path / "donor" / "model.safetensors").read_bytes()[:8], "little")
    order = ["t3", "t0", "t5", "t1", "t4", "t2"]  # copied out of source order, into two shards
    out = tmp_path / "out"
    out.mkdir()
    fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    writer = ShardedWriter(out, [next(t for t in layouts if t.name == n) for n in order], shard_size=3 * 1554)
    with (tmp_path / "donor" / "model.safetensors").open("rb", buffering=0) as handle:
        for name in order:
            writer.copy(name, handle, header_end + int(name[1:]) * 1554)
    writer.close()
    if fds_before is not None:
        assert len(os.listdir("/proc/self/fd")) == fds_before
    assert len(writer.shards) == 2
    for shard in writer.shards:
        with safe_open(out / shard.file, "np") as f:
            names = f.keys()  # safe_open has keys() but is no mapping: it cannot be iterated
            for name in names:
                assert np.array_equal(f.get_tensor(name), values[name])


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice is Linux-only")
def test_spliced_pieces_end_on_piece_boundaries_of_the_output(source, tmp_path, monkeypatch):
    real_splice = os.splice
    ends = []

    def recording_splice(src, dst, count, **kwargs):
        moved = real_splice(src, dst, count, **kwargs)
        if "offset_src" not in kwargs:  # pipe → output
            ends.append(os.lseek(dst, 0, os.SEEK_CUR))
        return moved

    monkeypatch.setattr(os, "splice", recording_splice)
    pipe = writer_module._Pipe()
    try:
        expected = copy_ranges(source, tmp_path / "out", pipe)
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == expected
    range_ends = {len(b"header") + sum(n for _, n in RANGES[:k + 1]) for k in range(len(RANGES))}
    assert len(ends) > len(RANGES)
    assert all(end % writer_module.SPLICE_CHUNK == 0 or end in range_ends for end in ends)


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice is Linux-only")
def test_a_pipe_that_cannot_grow_still_copies(source, tmp_path, monkeypatch):
    real_fcntl = writer_module.fcntl.fcntl

    def no_resize(fd, command, *args):
        if command == writer_module.fcntl.F_SETPIPE_SZ:
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_fcntl(fd, command, *args)

    monkeypatch.setattr(writer_module.fcntl, "fcntl", no_resize)
    pipe = writer_module._Pipe()
    try:
        expected = copy_ranges(source, tmp_path / "out", pipe)
    finally:
        pipe.close()
    assert (tmp_path / "out").read_bytes() == expected


def small_model(tmp_path):
    values = {f"t{i}": np.arange(i * 100, i * 100 + 50, dtype=np.float16) for i in range(4)}
    return values, [TensorInfo(name, v.shape, "F16") for name, v in values.items()]


def fake_fallocate(code, calls):
    """A libc ``fallocate`` stand-in that records its calls and fails with ``code`` (0: succeeds)."""
    def fallocate(fd, mode, offset, length):
        calls.append((mode, offset, length))
        ctypes.set_errno(code)
        return -1 if code else 0
    return lambda: fallocate


@pytest.mark.skipif(writer_module._fallocate() is None, reason="no fallocate in this libc")
def test_each_shard_is_preallocated_at_its_final_size(tmp_path):
    values, layouts = small_model(tmp_path)
    writer = ShardedWriter(tmp_path, layouts, shard_size=200)
    writer.write("t0", memoryview(values["t0"].view(np.uint8)))
    first = writer.shards[0]
    assert os.path.getsize(tmp_path / first.file) == len(first.header()) + first.data_bytes
    for name in list(values)[1:]:
        writer.write(name, memoryview(values[name].view(np.uint8)))
    writer.close()
    for shard in writer.shards:
        assert os.path.getsize(tmp_path / shard.file) == len(shard.header()) + shard.data_bytes
        with safe_open(tmp_path / shard.file, "np") as f:
            names = f.keys()  # no mapping, see above
            assert all(np.array_equal(f.get_tensor(n), values[n]) for n in names)


def test_a_filesystem_without_fallocate_still_gets_every_byte(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(writer_module, "_fallocate", fake_fallocate(errno.EOPNOTSUPP, calls))
    values, layouts = small_model(tmp_path)
    writer = ShardedWriter(tmp_path, layouts)
    for layout in layouts:
        writer.write(layout.name, memoryview(values[layout.name].view(np.uint8)))
    writer.close()
    assert calls == [(0, 0, len(writer.shards[0].header()) + writer.shards[0].data_bytes)]
    with safe_open(tmp_path / writer_module.SINGLE_FILE, "np") as f:
        assert all(np.array_equal(f.get_tensor(n), values[n]) for n in values)


def test_a_disk_too_full_for_the_shard_fails_before_any_tensor(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_fallocate", fake_fallocate(errno.ENOSPC, []))
    values, layouts = small_model(tmp_path)
    writer = ShardedWriter(tmp_path, layouts)
    with pytest.raises(OSError) as raised:
        writer.write("t0", memoryview(values["t0"].view(np.uint8)))
    writer.abort()
    assert raised.value.errno == errno.ENOSPC
    assert os.path.getsize(tmp_path / writer_module.SINGLE_FILE) == 0
