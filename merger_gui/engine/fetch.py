"""Download the weights of Hub donors that are not in the local Hugging Face cache.

Only what a merge needs is fetched: the weight files the donor's tensors live in (and
their index), ``config.json`` and the tokenizer files. Each file is downloaded by
huggingface_hub in a worker thread whose progress reaches the caller as events; a
cancel (or closing the generator) stops the download at its next chunk, and the
partial file stays in the cache for huggingface_hub to resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from tqdm.auto import tqdm

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import DonorError

from .events import DownloadProgress, MergeCancelled
from .output import TOKENIZER_FILES

INDEX_FILE = "model.safetensors.index.json"


def needs_fetch(donor: DonorInfo) -> bool:
    """A Hub donor whose weights (or tokenizer) are not all in the local cache."""
    if donor.kind != "hub":
        return False
    return donor.path is None or donor.download_bytes > 0 or not (Path(donor.path) / "tokenizer_config.json").is_file()


def fetch_donor(model: str, donor: DonorInfo, cancel: threading.Event | None = None
                ) -> Generator[DownloadProgress, None, DonorInfo]:
    """Download ``donor``'s weight, config and tokenizer files; yields progress, returns the local donor.

    Raises:
        DonorError: a file cannot be downloaded.
        MergeCancelled: ``cancel`` was set during a download.
    """
    repo_id, _, revision = donor.ref.partition("@")
    weights = sorted({t.file for t in donor.tensors if t.file}) or ["model.safetensors"]
    required = ["config.json", *weights] + ([INDEX_FILE] if len(weights) > 1 else [])
    config = None
    for name in required + [n for n in TOKENIZER_FILES if n not in required]:
        path = yield from _download(model, repo_id, revision or None, name, name in required, cancel)
        if name == "config.json":
            config = path
    assert config is not None  # required files raise when missing
    return replace(donor, path=str(Path(config).parent), download_bytes=0)


def _download(model: str, repo_id: str, revision: str | None, filename: str, required: bool,
              cancel: threading.Event | None) -> Generator[DownloadProgress, None, str | None]:
    updates: queue.Queue[tuple[int, int] | None] = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    class Progress(tqdm):  # type: ignore[misc]
        """Forwards huggingface_hub's byte counts instead of drawing a bar."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)
            self.size = int(kwargs.get("total") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if stop.is_set() or (cancel is not None and cancel.is_set()):
                raise _Stopped
            self.done += int(n or 0)
            updates.put((self.done, self.size))
            return None

    def work() -> None:
        try:
            outcome["path"] = hf_hub_download(repo_id, filename, revision=revision, tqdm_class=Progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator below
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=work, name=f"download {filename}", daemon=True)
    thread.start()
    try:
        while (item := updates.get()) is not None:
            yield DownloadProgress(model, filename, *item)
    finally:
        stop.set()  # the generator may be closed mid-download
    thread.join()
    error = outcome.get("error")
    if isinstance(error, _Stopped):
        raise MergeCancelled("cancelled: nothing was written")
    if isinstance(error, EntryNotFoundError) and not required:
        return None
    if error is not None:
        raise DonorError(f"donor {model}: cannot download {filename} from {repo_id}: "
                         f"{' '.join(str(error).split())[:200] or type(error).__name__}")
    return outcome["path"]


class _Stopped(Exception):
    """Raised inside the download thread to abandon a download."""
