"""Writing a stage's merged tensors on a background thread while the next one is merged.

The run loop merges one tensor at a time. :class:`WriteBehind` hands each result to one
writer thread and returns at once, so the ``write`` system call (the kernel copying the
bytes into the page cache) runs on another core during the next tensor's math: torch's
kernels and ``write`` both release the GIL. The writer sees the same calls in the same
order, never two at a time. At most one result waits to be written; a merge waits for it
first when holding it beside its own tensors would pass ``budget`` bytes. A file-to-file
copy runs on the calling thread once the queued write is done (it holds no memory and
gains nothing from a thread), so a plain copy never starts one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from merger_gui.core.safe_files import DonorHandle

from .writer import ShardedWriter


class WriteBehind:
    """Queues the writes of one stage on a writer thread, one tensor behind the math.

    Use as a context manager: leaving it waits for the queued write and ends the thread, also
    when the stage fails or is cancelled. A write's error is raised by the next call that
    waits for it (:meth:`flush`, :meth:`write`, :meth:`copy`, :meth:`make_room` or leaving),
    unless the stage is already failing.

    Args:
        writer: The stage's writer; nothing else may call it while this is open.
        budget: Bytes of tensors the stage may hold at once (queued result included).
    """

    def __init__(self, writer: ShardedWriter, budget: int) -> None:
        self._writer = writer
        self._budget = budget
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-writer")  # started lazily
        self._queued: Future[None] | None = None
        self._queued_bytes = 0

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if kind is None:
                self.flush()
            elif self._queued is not None:
                self._queued.exception()  # wait; the error that ends the stage is reported instead
        finally:
            self._queued = None
            self._thread.shutdown(wait=True, cancel_futures=True)

    def make_room(self, nbytes: int) -> None:
        """Wait for the queued write when holding ``nbytes`` more beside it would pass the budget."""
        if self._queued is not None and self._queued_bytes + nbytes > self._budget:
            self.flush()

    def write(self, name: str, data: memoryview) -> None:
        """Queue tensor ``name``'s bytes (kept alive until written) after the previous write."""
        self.flush()
        self._queued = self._thread.submit(self._writer.write, name, data)
        self._queued_bytes = data.nbytes

    def copy(self, name: str, source: DonorHandle, offset: int) -> None:
        """Copy tensor ``name`` file to file now, after the queued write (see :meth:`ShardedWriter.copy`)."""
        self.flush()
        self._writer.copy(name, source, offset)

    def flush(self) -> None:
        """Wait for the queued write; raises its error."""
        queued, self._queued = self._queued, None
        if queued is not None:
            queued.result()
