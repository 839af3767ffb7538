"""Run a merge off the GUI thread: a :class:`~.job_runner.JobRunner` whose job is the merge.

The job drives :func:`merger_gui.engine.run.run_merge` (imported lazily: it imports torch) over a
frozen copy of the recipe and donors and never touches widgets. The runner announces the outcome
only after its thread has finished, so a listener may start the next merge (or quit the app)
straight away.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject

from merger_gui.core.donor import DonorInfo
from merger_gui.core.recipe import Recipe
from merger_gui.engine.events import MergeCancelled

from .job_runner import JobRunner


class MergeRunner(JobRunner):
    """Owns the merge thread; one merge at a time.

    Signals:
        progress(event): every event of the engine (stage started, tensor progress, warnings…).
        finished(MergeDone), failed(message), cancelled(): the outcome, after the thread ended.
        running_changed(bool): a merge started or ended.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent, what="merge")

    def start_merge(self, recipe: Recipe, donors: Mapping[str, DonorInfo], out_dir: str | Path,
                    **options: Any) -> None:
        """Merge ``recipe`` into ``out_dir``; ``options`` are :class:`MergeOptions` fields
        (``device``, ``overwrite``, ``shard_size``…). The last event, and so ``finished``'s, is
        :class:`MergeDone`.

        Raises:
            RuntimeError: a merge is already running.
        """
        frozen = dict(donors)
        target = Path(out_dir)

        def job(cancel: threading.Event) -> Iterator[object]:
            from merger_gui.engine.run import MergeOptions, run_merge

            return run_merge(recipe, frozen, target, MergeOptions(**options), cancel)

        self.start(job, (MergeCancelled,))
