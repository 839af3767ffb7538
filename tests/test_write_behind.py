"""Writing merged tensors on a background thread: order, memory budget, errors, no thread left behind."""

from __future__ import annotations

import errno
import io
import threading

import pytest

from merger_gui.engine.write_behind import WriteBehind


class GatedWriter:
    """A writer whose writes wait for ``gate``; records what it wrote, in order."""

    def __init__(self, error: OSError | None = None) -> None:
        self.gate = threading.Event()
        self.written: list[str] = []
        self.error = error

    def write(self, name: str, data: memoryview) -> None:
        self.gate.wait()
        if self.error is not None:
            raise self.error
        self.written.append(f"{name}:{bytes(data).decode()}")

    def copy(self, name: str, source: io.BytesIO, offset: int) -> None:
        self.written.append(f"{name}:copy@{offset}")


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("merge-writer")]


def test_writes_return_at_once_and_land_in_order():
    writer = GatedWriter()
    with WriteBehind(writer, budget=100) as output:  # type: ignore[arg-type]
        output.write("a", memoryview(b"1"))
        assert writer.written == [] and len(writer_threads()) == 1
        writer.gate.set()
        output.write("b", memoryview(b"2"))
        output.copy("c", io.BytesIO(), 5)
        output.write("d", memoryview(b"3"))
    assert writer.written == ["a:1", "b:2", "c:copy@5", "d:3"]
    assert writer_threads() == []


def test_make_room_waits_only_when_the_queued_write_and_the_next_merge_pass_the_budget():
    writer = GatedWriter()
    with WriteBehind(writer, budget=10) as output:  # type: ignore[arg-type]
        output.write("a", memoryview(b"1234"))
        output.make_room(6)  # 4 + 6 fit
        assert writer.written == []
        threading.Timer(0.05, writer.gate.set).start()
        output.make_room(7)
        assert writer.written == ["a:1234"]


def test_a_write_error_is_raised_to_the_caller():
    writer = GatedWriter(OSError(errno.ENOSPC, "No space left on device"))
    writer.gate.set()
    with pytest.raises(OSError, match="No space left"):
        with WriteBehind(writer, budget=10) as output:  # type: ignore[arg-type]
            output.write("a", memoryview(b"1"))
            output.flush()
    assert writer_threads() == []


def test_leaving_on_an_error_waits_for_the_queued_write_and_ends_the_thread():
    writer = GatedWriter(OSError(errno.EIO, "I/O error"))
    with pytest.raises(KeyboardInterrupt):
        with WriteBehind(writer, budget=10) as output:  # type: ignore[arg-type]
            output.write("a", memoryview(b"1"))
            writer.gate.set()
            raise KeyboardInterrupt  # the stage's own error wins over the write's
    assert writer_threads() == []
