"""The designer's layer analysis as one job for a worker thread, with its results cached on disk.

Each part is cached apart, as JSON under the user's cache folder (``merger-gui/analysis``): the
weight similarity by the two donors' (and the base's) weight fingerprints, each donor's layer
distances by its fingerprint and the text's hash, the stage's seams by all of those and the seams.
A part found there costs no engine call, so reopening a recipe shows its analysis at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QStandardPaths

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError
from merger_gui.engine.activation_analysis import (
    ActivationOptions, ActivationsDone, Seam, SeamsDone, analyze_activations, analyze_seams,
)
from merger_gui.engine.fingerprint import folder_fingerprint
from merger_gui.engine.layer_similarity import AnalysisCancelled, SimilarityDone, compare_layers
from merger_gui.engine.lora import adapter_fingerprint

CACHE_FORMAT = "merger-gui-analysis-1"


@dataclass(frozen=True)
class AnalysisRequest:
    """Two donors of the current stage (name → facts with a local folder), an optional base, the stage's seams."""

    donors: tuple[tuple[str, DonorInfo], ...]
    base: tuple[str, DonorInfo] | None
    seams: tuple[Seam, ...]
    folders: Mapping[str, DonorInfo]  # every donor a seam touches (with a local folder)
    block: int
    options: ActivationOptions = ActivationOptions()


@dataclass(frozen=True)
class SeamResult:
    seam: Seam
    distance: float
    best_to_layer: int


@dataclass
class AnalysisResult:
    """What the panel shows; ``notes`` say what was left out and why."""

    donors: tuple[str, ...]
    block: int
    similarity: list[list[float]] | None = None
    layer_distance: dict[str, list[float]] = field(default_factory=dict)
    block_distance: dict[str, list[float]] = field(default_factory=dict)
    seams: list[SeamResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cached: int = 0  # parts read from the cache


@dataclass(frozen=True)
class AnalysisReady:
    """The job's last event."""

    result: AnalysisResult


def cache_dir() -> Path:
    """``merger-gui/analysis`` in the user's cache folder (XDG_CACHE_HOME on Linux)."""
    root = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericCacheLocation)
    return Path(root) / "merger-gui" / "analysis"


def activations_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


class AnalysisCache:
    """JSON files named by the hash of their key."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or cache_dir()

    def path(self, key: Mapping[str, Any]) -> Path:
        text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()}.json"

    def get(self, key: Mapping[str, Any]) -> Any:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: Mapping[str, Any], value: Any) -> None:
        """Written to a temporary sibling and renamed; a cache that cannot be written is no error."""
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(value), encoding="utf-8")
            partial.replace(path)
        except OSError:
            pass


def run_analysis(request: AnalysisRequest, cancel: threading.Event, cache: AnalysisCache | None = None
                 ) -> Iterator[object]:
    """Weight similarity, layer distances and seams, each from the cache or the engine; ends with
    :class:`AnalysisReady`. Activations are skipped (with a note) when transformers is missing or
    cannot run a donor."""
    cache = cache or AnalysisCache()
    fingerprints = {name: folder_fingerprint(info.path) + adapter_fingerprint(info) for name, info in
                    (*request.donors, *([request.base] if request.base else []), *request.folders.items())
                    if info.path}
    text = hashlib.sha256((request.options.text or "<sample>").encode()).hexdigest()
    result = AnalysisResult(tuple(name for name, _ in request.donors), request.block)
    yield from _similarity(request, fingerprints, cache, result, cancel)
    if not activations_available():
        result.notes.append("activations left out: transformers is not installed")
    else:
        try:
            yield from _distances(request, fingerprints, text, cache, result, cancel)
            yield from _seams(request, fingerprints, text, cache, result, cancel)
        except AnalysisCancelled:
            raise
        except UserError as exc:
            result.notes.append(f"activations left out: {exc}")
    yield AnalysisReady(result)


def _similarity(request: AnalysisRequest, fingerprints: Mapping[str, str], cache: AnalysisCache,
                result: AnalysisResult, cancel: threading.Event) -> Iterator[object]:
    base = request.base
    key = {"part": "similarity", "donors": [fingerprints[n] for n, _ in request.donors],
           "base": fingerprints[base[0]] if base else None}
    found = cache.get(key)
    if found is None:
        done = None
        for event in compare_layers(request.donors, base, cancel):
            if isinstance(event, SimilarityDone):
                done = event
            else:
                yield event
        assert done is not None and done.result.similarity is not None  # two donors: always a matrix
        found = [list(row) for row in done.result.similarity]
        cache.put(key, found)
    else:
        result.cached += 1
    result.similarity = found


def _distances(request: AnalysisRequest, fingerprints: Mapping[str, str], text: str, cache: AnalysisCache,
               result: AnalysisResult, cancel: threading.Event) -> Iterator[object]:
    keys = {name: {"part": "distances", "donor": fingerprints[name], "text": text,
                   "max_tokens": request.options.max_tokens, "block": request.block} for name, _ in request.donors}
    missing = []
    for name, info in request.donors:
        found = cache.get(keys[name])
        if found is None:
            missing.append((name, info))
        else:
            result.cached += 1
            result.layer_distance[name], result.block_distance[name] = found["layer"], found["block"]
    if not missing:
        return
    options = ActivationOptions(request.options.text, request.options.max_tokens, (request.block,),
                                request.options.device)
    for event in analyze_activations(missing, options, cancel):
        if isinstance(event, ActivationsDone):
            for distances in event.distances:
                found = {"layer": list(distances.layer_distance),
                         "block": list(distances.block_distance[request.block])}
                cache.put(keys[distances.donor], found)
                result.layer_distance[distances.donor], result.block_distance[distances.donor] = (
                    found["layer"], found["block"])
        else:
            yield event


def _seams(request: AnalysisRequest, fingerprints: Mapping[str, str], text: str, cache: AnalysisCache,
           result: AnalysisResult, cancel: threading.Event) -> Iterator[object]:
    if not request.seams:
        return
    key = {"part": "seams", "text": text, "max_tokens": request.options.max_tokens,
           "seams": [_seam_key(s, fingerprints) for s in request.seams]}
    found = cache.get(key)
    if found is None:
        found = []
        for event in analyze_seams(request.seams, request.folders, request.options, cancel):
            if isinstance(event, SeamsDone):
                found = [[s.distance, s.best_to_layer] for s in event.seams]
            else:
                yield event
        cache.put(key, found)
    else:
        result.cached += 1
    result.seams = [SeamResult(seam, distance, best) for seam, (distance, best) in zip(request.seams, found)]


def _seam_key(seam: Seam, fingerprints: Mapping[str, str]) -> Sequence[object]:
    return [seam.source.model, fingerprints.get(seam.source.model), seam.source.layer,
            seam.target.model, fingerprints.get(seam.target.model), seam.target.layer]
