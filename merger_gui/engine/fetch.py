"""Download the weights of Hub donors that are not in the local Hugging Face cache.

Only what a merge needs is fetched: the weight files holding the tensors the plan reads
(and their index), ``config.json``, and the tokenizer files when the merge reads that
donor's tokenizer, and the adapter of a MODEL+LORA donor whose adapter is a Hub repo; files
already in the cache are not fetched again. Each file is
downloaded by huggingface_hub in a worker thread whose progress reaches the caller as
events; a cancel (or closing the generator) stops the download at its next chunk, and the
partial file stays in the cache for huggingface_hub to resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from tqdm.auto import tqdm

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import DonorError
from merger_gui.core.lora_config import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from merger_gui.core.plan import Plan
from merger_gui.core.recipe import Recipe
from merger_gui.core.tokenizer_vocab import tokenizer_models

from .events import DownloadProgress, MergeCancelled
from .output import TOKENIZER_FILES

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass(frozen=True)
class DonorFetch:
    """What one Hub donor must download before a merge reads it."""

    model: str
    weights: tuple[str, ...]  # weight files the plan reads that are not in the local cache
    tokenizer: bool  # the merge reads this donor's tokenizer
    nbytes: int  # size of ``weights``


def plan_fetches(recipe: Recipe, plan: Plan, donors: Mapping[str, DonorInfo],
                 copy_tokenizer: bool = True) -> list[DonorFetch]:
    """The Hub donors ``plan`` uses that miss files in the local cache, and those files."""
    reads = weight_files_read(plan, donors)
    tokenizers = tokenizers_read(recipe, plan, copy_tokenizer)
    used = {m for sp in plan.stages for m in recipe.stages[sp.index].referenced_models}
    fetches = []
    for model in sorted(used | tokenizers):
        donor = donors.get(model)
        if donor is None or donor.kind != "hub":
            continue
        weights = tuple(sorted(f for f in reads.get(model, ()) if not _cached(donor, f)))
        tokenizer = model in tokenizers
        if weights or donor.path is None or (tokenizer and not _cached(donor, TOKENIZER_CONFIG)):
            fetches.append(DonorFetch(model, weights, tokenizer, sum(file_bytes(donor, f) for f in weights)))
    return fetches


def weight_files_read(plan: Plan, donors: Mapping[str, DonorInfo]) -> dict[str, set[str]]:
    """The weight files holding the tensors ``plan`` reads, by donor."""
    names: dict[str, set[str]] = {}
    for stage in plan.stages:
        for tensor in stage.tensors:
            for source in tensor.sources:
                names.setdefault(source.model, set()).add(source.tensor)
    return {model: _files_of(donors[model], tensors) for model, tensors in names.items() if model in donors}


def tokenizers_read(recipe: Recipe, plan: Plan, copy_tokenizer: bool = True) -> set[str]:
    """Models whose tokenizer files a merge reads.

    That is each stage's config donor (its tokenizer is copied to the output), and every model
    of a stage with a tokenizer section (vocabularies are rebuilt) or a chat template (``auto``
    reads the donors').
    """
    models: set[str] = set()
    for stage_plan in plan.stages:
        stage = recipe.stages[stage_plan.index]
        if stage.effective_tokenizer_source is not None:
            models.update(tokenizer_models(stage)[1])
        if stage.chat_template:
            models.update(stage.referenced_models)
        if copy_tokenizer:
            models.add(stage_plan.config_donor)
    return models


def file_bytes(donor: DonorInfo, name: str) -> int:
    """Size of weight file ``name`` of ``donor``: as the Hub lists it, else the sum of its tensors."""
    size = dict(donor.file_sizes).get(name)
    return size if size is not None else sum(t.nbytes for t in donor.tensors if t.file == name)


def fetch_donor(fetch: DonorFetch, donor: DonorInfo, cancel: threading.Event | None = None
                ) -> Generator[DownloadProgress, None, DonorInfo]:
    """Download ``config.json``, ``fetch.weights`` (with the index of a sharded repo) and, when
    ``fetch.tokenizer``, the tokenizer files; yields progress, returns the local donor.

    Raises:
        DonorError: a file cannot be downloaded.
        MergeCancelled: ``cancel`` was set during a download.
    """
    repo_id, _, revision = donor.ref.partition("@")
    sharded = len(_weight_files(donor)) > 1
    required = ["config.json", *fetch.weights] + ([INDEX_FILE] if sharded else [])
    optional = [n for n in TOKENIZER_FILES if n not in required] if fetch.tokenizer else []
    config = None
    for name in required + optional:
        path = yield from _download(fetch.model, repo_id, revision or None, name, name in required, cancel)
        if name == "config.json":
            config = path
    assert config is not None  # required files raise when missing
    fetched = replace(donor, path=str(Path(config).parent))
    missing = sum(file_bytes(fetched, f) for f in _weight_files(fetched) if not _cached(fetched, f))
    return replace(fetched, download_bytes=missing)


def fetch_adapter(model: str, donor: DonorInfo, cancel: threading.Event | None = None
                  ) -> Generator[DownloadProgress, None, DonorInfo]:
    """``donor`` with its Hub adapter's files in the cache (downloaded with progress when missing)
    and ``adapter`` their local folder, which the reader and the stage fingerprints then read.

    Raises:
        DonorError: a file cannot be downloaded.
        MergeCancelled: ``cancel`` was set during a download.
    """
    assert donor.adapter is not None
    repo_id, _, revision = donor.adapter.partition("@")
    cached = [try_to_load_from_cache(repo_id, name, revision=revision or None) for name in (ADAPTER_CONFIG,
                                                                                           ADAPTER_WEIGHTS)]
    if all(isinstance(path, str) for path in cached) and len({Path(str(p)).parent for p in cached}) == 1:
        return replace(donor, adapter=str(Path(str(cached[0])).parent))
    paths = []
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):  # both: one snapshot, even when the repo moved on
        paths.append(Path(str((yield from _download(model, repo_id, revision or None, name, True, cancel)))))
    fetched = sum(path.stat().st_size for path, was in zip(paths, cached) if not isinstance(was, str))
    return replace(donor, adapter=str(paths[1].parent), download_bytes=max(0, donor.download_bytes - fetched))


def adapter_fetch_bytes(donor: DonorInfo) -> int:
    """Bytes of ``donor``'s Hub adapter still to download: what its ``download_bytes`` counts beyond
    the model's own weight files not in the cache (the resolver adds the adapter's files to them)."""
    if not donor.adapter or Path(donor.adapter).is_dir():
        return 0
    model = sum(file_bytes(donor, f) for f in _weight_files(donor) if not _cached(donor, f)) \
        if donor.kind == "hub" else 0
    return max(0, donor.download_bytes - model)


def _files_of(donor: DonorInfo, tensors: set[str]) -> set[str]:
    """The weight files holding ``tensors``; every file when one of them has no known file."""
    files = {info.file if (info := donor.tensor(name)) is not None else None for name in tensors}
    if None in files:
        return set(_weight_files(donor))
    return {f for f in files if f is not None}


def _weight_files(donor: DonorInfo) -> list[str]:
    return sorted({t.file for t in donor.tensors if t.file} | {n for n, _ in donor.file_sizes}) or [SINGLE_FILE]


def _cached(donor: DonorInfo, name: str) -> bool:
    return donor.path is not None and (Path(donor.path) / name).is_file()


def _download(model: str, repo_id: str, revision: str | None, filename: str, required: bool,
              cancel: threading.Event | None) -> Generator[DownloadProgress, None, str | None]:
    updates: queue.Queue[tuple[int, int] | None] = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    class Progress(tqdm):
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
