"""Inspect a Hugging Face Hub repo from its config.json and safetensors headers, never its weights.

Online, huggingface_hub fetches ``config.json`` and reads each safetensors header with a
ranged request; the headers are then remembered next to the HF cache, so the same revision
can be inspected offline (``HF_HUB_OFFLINE=1``) later even when no weights were downloaded.
Offline, everything comes from the local cache: ``config.json`` of the cached snapshot and
the headers of cached weight files, else the remembered headers.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    NotASafetensorsRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from .donor import DonorInfo, TensorInfo
from .errors import DonorError
from .inspect import donor_from_config, natural_order, read_config, read_weight_map
from .safe_files import INDEX_LIMIT, donor_file, is_present, read_json_file
from .safetensors_header import parse_safetensors_header, read_safetensors_header


def _network_errors() -> tuple[type[BaseException], ...]:
    # requests errors (old huggingface_hub) are OSErrors; httpx / httpx2 errors (>= 1.0) are not.
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


NETWORK_ERRORS = _network_errors()
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def inspect_repo(repo_id: str, revision: str | None = None) -> DonorInfo:
    """Inspect ``repo_id`` at ``revision`` (default: main) without downloading weights.

    ``download_bytes`` of the result is the size of the weight files not yet in the cache;
    ``file_sizes`` gives the size of each weight file.

    Raises:
        DonorError: unknown repo or revision, gated repo, no network, a repo without
            safetensors weights, or (offline) a repo the cache does not describe.
    """
    ref = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        if constants.is_offline_mode():
            config, sha, files = _offline(repo_id, revision, ref)
        else:
            config, sha, files = _online(repo_id, revision, ref)
    except GatedRepoError:
        raise DonorError(f"Hub repo {ref} is gated: accept its licence and log in (hf auth login)") from None
    except RevisionNotFoundError:
        raise DonorError(f"Hub repo {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise DonorError(f"Hub repo {repo_id} not found (or private)") from None
    except HFValidationError as exc:
        raise DonorError(f"{ref} is not a valid Hub repo id ({exc})") from None
    except NETWORK_ERRORS as exc:
        raise DonorError(f"cannot reach the Hub for {ref}: {_one_line(exc)}") from None
    tensors = tuple(t for f in files.values() for t in f.tensors.values())
    missing = sum(f.size for name, f in files.items() if _cached_path(repo_id, name, sha) is None)
    snapshot = _cached_path(repo_id, "config.json", sha)
    donor = donor_from_config(
        ref, "hub", config, natural_order(tensors), path=str(Path(snapshot).parent) if snapshot else None,
        weight_format="safetensors", download_bytes=missing,
    )
    return replace(donor, file_sizes=tuple(sorted((name, f.size) for name, f in files.items())))


@dataclass(frozen=True)
class _WeightFile:
    """Tensors and byte size of one safetensors file of a repo."""

    tensors: dict[str, TensorInfo]
    size: int


def _online(repo_id: str, revision: str | None, ref: str) -> tuple[dict[str, Any], str, dict[str, _WeightFile]]:
    api = HfApi()
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    sha = info.sha or revision or "main"
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or ()}
    # The named revision (not the sha) so the cache records refs/<revision> for offline use.
    config = read_config(Path(hf_hub_download(repo_id, "config.json", revision=revision)))
    try:
        with _no_progress_bars():  # a sharded repo's headers would draw a tqdm bar on stderr
            metadata = api.get_safetensors_metadata(repo_id, revision=sha)
    except NotASafetensorsRepoError:
        raise DonorError(f"Hub repo {ref} has no {SINGLE_FILE} or {INDEX_FILE}: download it and use "
                         "the folder") from None
    except SafetensorsParsingError as exc:
        raise DonorError(f"Hub repo {ref}: {_one_line(exc)}") from None
    headers = {
        name: {t: {"dtype": i.dtype, "shape": list(i.shape), "data_offsets": list(i.data_offsets)}
               for t, i in meta.tensors.items()}
        for name, meta in metadata.files_metadata.items()
    }
    files = {name: _WeightFile(_parse(header, f"{ref}/{name}", name), sizes.get(name, 0))
             for name, header in headers.items()}
    _remember(repo_id, sha, {name: {"size": files[name].size, "header": h} for name, h in headers.items()})
    return config, sha, files


def _offline(repo_id: str, revision: str | None, ref: str) -> tuple[dict[str, Any], str, dict[str, _WeightFile]]:
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except LocalEntryNotFoundError:
        raise DonorError(f"Hub repo {ref} is not in the local Hugging Face cache (HF_HUB_OFFLINE is set)") \
            from None
    snapshot = config_path.parent
    sha = snapshot.name
    remembered = _recall(repo_id, sha)
    if is_present(snapshot / INDEX_FILE):
        names = list(dict.fromkeys(read_weight_map(snapshot / INDEX_FILE).values()))
    elif is_present(snapshot / SINGLE_FILE):
        names = [SINGLE_FILE]
    else:
        names = list(remembered)
    if not names:
        raise DonorError(f"Hub repo {ref}: the local cache holds no safetensors weights or headers for it")
    files: dict[str, _WeightFile] = {}
    for name in names:
        local = snapshot / name
        if is_present(local):
            files[name] = _WeightFile(read_safetensors_header(local), donor_file(local).stat().st_size)
        elif isinstance(entry := remembered.get(name), dict) and isinstance(entry.get("header"), dict):
            files[name] = _WeightFile(_parse(entry["header"], f"{ref}/{name}", name), int(entry.get("size", 0)))
        else:
            raise DonorError(f"Hub repo {ref}: {name} is not cached and its header is unknown offline")
    config = read_config(config_path)
    return config, sha, files


def _parse(header: Mapping[str, Any], source: str, name: str) -> dict[str, TensorInfo]:
    # Re-validate with our own checks: offsets, sizes and dtypes must be consistent.
    return parse_safetensors_header(json.dumps(header).encode(), None, source, file_name=name)


def header_cache_dir() -> Path:
    """Where remembered safetensors headers live (beside the HF hub cache)."""
    return Path(constants.HF_HUB_CACHE).parent / "merger_gui" / "safetensors-headers"


def _header_file(repo_id: str, sha: str) -> Path:
    return header_cache_dir() / f"models--{repo_id.replace('/', '--')}" / f"{sha}.json"


def _remember(repo_id: str, sha: str, files: dict[str, Any]) -> None:
    target = _header_file(repo_id, sha)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"repo_id": repo_id, "sha": sha, "files": files}))
        temporary.replace(target)
    except OSError:
        pass  # a read-only cache only costs the offline shortcut


def _recall(repo_id: str, sha: str) -> dict[str, Any]:
    try:
        data = read_json_file(_header_file(repo_id, sha), INDEX_LIMIT, "remembered header file")
        files = data["files"]
    except (DonorError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def _cached_path(repo_id: str, filename: str, sha: str) -> str | None:
    path = try_to_load_from_cache(repo_id, filename, revision=sha)
    return path if isinstance(path, str) else None


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    if are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
