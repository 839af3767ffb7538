"""Pure edits of a stage's slices: each returns a new :class:`Stage`, clamped to valid ranges.

Ranges are mergekit's half-open ``[start, end)``; ``num_layers`` (the donor's layer count,
when known) bounds them. An edit never yields an empty or reversed range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal, TypeVar

from .methods import method_spec
from .recipe import Recipe, Slice, SliceSource, Stage

# A model name, or an optional one (a base model): swapping keeps which.
_Name = TypeVar("_Name", str, "str | None")


def layer_range_label(start: int, end: int) -> str:
    """How people say a half-open range: ``[0, 16]`` → ``"layers 0–15"``, ``[4, 5]`` → ``"layer 4"``."""
    if end - start == 1:
        return f"layer {start}"
    return f"layers {start}–{end - 1}"


def clamp_range(start: int, end: int, num_layers: int | None = None) -> tuple[int, int]:
    """Order, bound and widen ``[start, end)`` so it selects at least one layer of the donor."""
    start, end = (start, end) if start <= end else (end, start)
    start = max(0, start)
    if num_layers is not None and num_layers > 0:
        start = min(start, num_layers - 1)
        end = min(end, num_layers)
    return start, max(end, start + 1)


def _slices(stage: Stage) -> list[Slice]:
    return list(stage.slices or ())


def _with_slices(stage: Stage, slices: list[Slice]) -> Stage:
    return replace(stage, slices=tuple(slices))


def _with_source(slice_: Slice, index: int, source: SliceSource) -> Slice:
    sources = list(slice_.sources)
    sources[index] = source
    return replace(slice_, sources=tuple(sources))


def add_slice(stage: Stage, model: str, start: int, end: int, *,
              index: int | None = None, num_layers: int | None = None) -> Stage:
    """Insert a one-source slice of ``model`` (at ``index``, default last)."""
    slices = _slices(stage)
    new = Slice((SliceSource(model, clamp_range(start, end, num_layers)),))
    slices.insert(len(slices) if index is None else max(0, min(index, len(slices))), new)
    return _with_slices(stage, slices)


def move_slice(stage: Stage, slice_index: int, new_start: int, *,
               source: int = 0, num_layers: int | None = None) -> Stage:
    """Move one source's range to start at ``new_start``, keeping its length, inside the donor."""
    slices = _slices(stage)
    current = slices[slice_index].sources[source]
    length = current.num_layers
    upper = None if num_layers is None else max(0, num_layers - length)
    start = max(0, new_start if upper is None else min(new_start, upper))
    moved = replace(current, layer_range=(start, start + length))
    slices[slice_index] = _with_source(slices[slice_index], source, moved)
    return _with_slices(stage, slices)


def resize_slice(stage: Stage, slice_index: int, start: int | None = None, end: int | None = None, *,
                 source: int = 0, num_layers: int | None = None) -> Stage:
    """Set one source's start and/or end (keeping at least one layer).

    The other sources of the slice (slerp and friends pair layers one to one) get the same
    change of start and end, so every source keeps the same length.
    """
    slices = _slices(stage)
    slice_ = slices[slice_index]
    current = slice_.sources[source]
    new_start = current.start if start is None else start
    new_end = current.end if end is None else end
    if start is not None:
        new_start = min(new_start, new_end - 1)
    else:
        new_end = max(new_end, new_start + 1)
    new_start, new_end = clamp_range(new_start, new_end, num_layers)
    d_start, d_end = new_start - current.start, new_end - current.end
    sources = []
    for i, s in enumerate(slice_.sources):
        if i == source:
            sources.append(replace(s, layer_range=(new_start, new_end)))
        else:
            linked_start = max(0, s.start + d_start)
            sources.append(replace(s, layer_range=(linked_start, max(linked_start + 1, s.end + d_end))))
    slices[slice_index] = replace(slice_, sources=tuple(sources))
    return _with_slices(stage, slices)


def set_source_range(stage: Stage, slice_index: int, layer_range: tuple[int, int], *,
                     source: int = 0, num_layers: int | None = None) -> Stage:
    """What dragging one source's bar to ``layer_range`` does.

    The same length moves that source alone (:func:`move_slice`); another length resizes
    it by the end that changed, and the slice's other sources alike (:func:`resize_slice`).
    """
    current = stage.slices[slice_index].sources[source] if stage.slices else None
    if current is None or layer_range == current.layer_range:
        return stage
    start, end = layer_range
    if end - start == current.num_layers:
        return move_slice(stage, slice_index, start, source=source, num_layers=num_layers)
    return resize_slice(stage, slice_index, start if start != current.start else None,
                        end if end != current.end else None, source=source, num_layers=num_layers)


def reorder_slice(stage: Stage, slice_index: int, new_index: int) -> Stage:
    """Move a slice to position ``new_index`` of the output (clamped)."""
    slices = _slices(stage)
    moved = slices.pop(slice_index)
    slices.insert(max(0, min(new_index, len(slices))), moved)
    return _with_slices(stage, slices)


def duplicate_slice(stage: Stage, slice_index: int) -> Stage:
    """Insert a copy of a slice right after it."""
    slices = _slices(stage)
    slices.insert(slice_index + 1, slices[slice_index])
    return _with_slices(stage, slices)


def delete_slice(stage: Stage, slice_index: int) -> Stage:
    """Remove a slice."""
    slices = _slices(stage)
    del slices[slice_index]
    return _with_slices(stage, slices)


def set_slice_model(stage: Stage, slice_index: int, model: str, *, source: int = 0,
                    num_layers: int | None = None) -> Stage:
    """Take one source's layers from another model (range clamped to that model)."""
    slices = _slices(stage)
    current = slices[slice_index].sources[source]
    new = replace(current, model=model, layer_range=clamp_range(current.start, current.end, num_layers))
    slices[slice_index] = _with_source(slices[slice_index], source, new)
    return _with_slices(stage, slices)


def rename_model(recipe: Recipe, old: str, new: str) -> Recipe:
    """Replace every reference to model ``old`` by ``new`` in every stage."""

    def swap(name: _Name) -> _Name:
        return new if name == old else name

    stages = []
    for stage in recipe.stages:
        slices = None if stage.slices is None else tuple(
            replace(s, base_model=swap(s.base_model),
                    sources=tuple(replace(src, model=swap(src.model)) for src in s.sources))
            for s in stage.slices)
        models = None if stage.models is None else tuple(replace(m, model=swap(m.model)) for m in stage.models)
        stages.append(replace(stage, slices=slices, models=models, base_model=swap(stage.base_model)))
    return replace(recipe, stages=tuple(stages))


def fit_range(start: int, end: int, num_layers: int | None) -> tuple[int, int]:
    """``[start, end)`` moved (not shrunk) to fit a donor of ``num_layers``, when it can."""
    length = end - start
    if num_layers is not None and num_layers > 0 and end > num_layers:
        start = max(0, num_layers - length)
        return clamp_range(start, start + length, num_layers)
    return clamp_range(start, end, num_layers)


def add_source(stage: Stage, slice_index: int, model: str, num_layers: int | None = None) -> Stage:
    """Give slice ``slice_index`` one more source: ``model`` at the slice's range (fitted to it)."""
    slices = _slices(stage)
    slice_ = slices[slice_index]
    first = slice_.sources[0]
    source = SliceSource(model, fit_range(first.start, first.end, num_layers))
    slices[slice_index] = replace(slice_, sources=(*slice_.sources, source))
    return _with_slices(stage, slices)


def remove_source(stage: Stage, slice_index: int, source_index: int) -> Stage:
    """Remove one source of a slice; a slice keeps at least one source."""
    slices = _slices(stage)
    slice_ = slices[slice_index]
    if len(slice_.sources) <= 1:
        return stage
    slices[slice_index] = replace(slice_, sources=tuple(s for k, s in enumerate(slice_.sources) if k != source_index))
    return _with_slices(stage, slices)


def linked_models(stage: Stage, model: str, shown: Sequence[str]) -> tuple[str, ...]:
    """The models a new slice dragged on ``model`` also takes its layers from (none for passthrough).

    The stage's other models among ``shown`` when it has some, else the other ``shown``
    models, as many as the merge method takes per slice.
    """
    spec = method_spec(stage.merge_method)
    if spec is None or spec.max_models == 1:
        return ()
    own = [m for m in stage.referenced_models if m != model and m in shown]
    others = own or [m for m in shown if m != model]
    return tuple(others[:None if spec.max_models is None else spec.max_models - 1])


def add_linked_slice(stage: Stage, models: tuple[str, ...], start: int, end: int, *,
                     num_layers: dict[str, int] | None = None) -> Stage:
    """Append a slice with one source per model (the first is the one dragged on), equal lengths.

    The first model's range is clamped to it; the others take the same range, moved to
    fit their donor where needed.
    """
    layers = num_layers or {}
    first = clamp_range(start, end, layers.get(models[0]))
    sources = [SliceSource(models[0], first)]
    sources += [SliceSource(m, fit_range(*first, layers.get(m))) for m in models[1:]]
    return _with_slices(stage, [*_slices(stage), Slice(tuple(sources))])


def nudge_slice(stage: Stage, slice_index: int, delta: int, *,
                num_layers: Mapping[str, int | None] | None = None) -> Stage:
    """Move every source of a slice by ``delta`` layers, as a block that stays inside its donors.

    The move is cut short where a source would leave its donor (``num_layers``, by model),
    so the sources stay paired layer for layer; a slice that cannot move is returned as is.
    """
    limits = num_layers or {}
    sources = stage.slices[slice_index].sources if stage.slices else ()
    if delta > 0:
        delta = min([delta] + [max(0, n - s.end) for s in sources if (n := limits.get(s.model)) is not None])
    else:
        delta = max([delta] + [-s.start for s in sources])
    if not sources or delta == 0:
        return stage
    slices = _slices(stage)
    moved = tuple(replace(s, layer_range=(s.start + delta, s.end + delta)) for s in sources)
    slices[slice_index] = replace(slices[slice_index], sources=moved)
    return _with_slices(stage, slices)


def nudge_slice_end(stage: Stage, slice_index: int, end: Literal["start", "end"], delta: int, *,
                    num_layers: Mapping[str, int | None] | None = None) -> Stage:
    """Move the start or the end of a slice by ``delta`` layers (every source alike, see :func:`resize_slice`)."""
    first = (stage.slices or ())[slice_index].sources[0]
    limit = (num_layers or {}).get(first.model)
    if end == "start":
        return resize_slice(stage, slice_index, start=first.start + delta, num_layers=limit)
    return resize_slice(stage, slice_index, end=first.end + delta, num_layers=limit)


def drop_layers(stage: Stage, model: str, start: int, end: int) -> Stage:
    """Remove ``model``'s layers ``[start, end)`` from the stage: each slice whose first source is
    ``model`` loses the output layers taken from them (trimmed, split in two, or deleted).

    The slice's other sources lose the same positions, so every source keeps its pairing.
    """
    slices: list[Slice] = []
    for slice_ in _slices(stage):
        first = slice_.sources[0] if slice_.sources else None
        if first is None or first.model != model:
            slices.append(slice_)
            continue
        cut_from, cut_to = max(start, first.start) - first.start, min(end, first.end) - first.start
        if cut_from >= cut_to:  # no overlap
            slices.append(slice_)
            continue
        slices += [_positions(slice_, a, b) for a, b in ((0, cut_from), (cut_to, first.num_layers)) if a < b]
    return _with_slices(stage, slices)


def _positions(slice_: Slice, start: int, end: int) -> Slice:
    """The part of a slice at positions ``[start, end)`` of every source."""
    return replace(slice_, sources=tuple(replace(s, layer_range=(s.start + start, s.start + end))
                                         for s in slice_.sources))


def set_slice_start(stage: Stage, slice_index: int, start: int, *, num_layers: int | None = None) -> Stage:
    """Let slice ``slice_index`` begin at its first source's layer ``start``: its end is kept when
    ``start`` is before it, else the slice moves there keeping its length (other sources alike)."""
    first = stage.slices[slice_index].sources[0] if stage.slices else None
    if first is None or first.start == start:
        return stage
    if start < first.end:
        return resize_slice(stage, slice_index, start=start, num_layers=num_layers)
    return nudge_slice(stage, slice_index, start - first.start,
                       num_layers={first.model: num_layers} if num_layers is not None else None)
