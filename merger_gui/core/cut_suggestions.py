"""Where to cut, as edits: suggestions read from a layer analysis that apply in one step.

Each :class:`CutSuggestion` carries a pure edit of the stage (:mod:`.slice_edits`) and the
sentence that says what it does and why, e.g. "drop the 8-layer block 22–29: the smallest change".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from .recipe import Stage
from .slice_edits import drop_layers, layer_range_label, set_slice_start


@dataclass(frozen=True)
class CutSuggestion:
    """A sentence and the edit of the stage it describes."""

    text: str
    edit: Callable[[Stage], Stage]


def used_layers(stage: Stage, model: str) -> set[int]:
    """The layers of ``model`` the stage takes as the first source of a slice."""
    return {layer for s in stage.slices or () if s.sources and s.sources[0].model == model
            for layer in range(s.sources[0].start, s.sources[0].end)}


def drop_block_suggestion(stage: Stage, model: str, block_distance: Sequence[float], size: int
                          ) -> CutSuggestion | None:
    """Drop the ``size``-layer block of ``model`` that changes the hidden state least, among the blocks
    the stage uses whole; None when no such block exists or dropping it would leave no layer."""
    used = used_layers(stage, model)
    blocks = [a for a in range(len(block_distance)) if set(range(a, a + size)) <= used]
    if not blocks:
        return None
    first = min(blocks, key=block_distance.__getitem__)
    edit = partial(drop_layers, model=model, start=first, end=first + size)
    if not edit(stage).slices:
        return None
    what = f"the {size}-layer block {first}–{first + size - 1}" if size > 1 else f"layer {first}"
    return CutSuggestion(f"Drop {model}'s {what}: the smallest change ({block_distance[first]:.3f})", edit)


def join_suggestion(stage: Stage, slice_index: int, source: tuple[str, int], target: tuple[str, int],
                    best_layer: int, num_layers: int | None = None) -> CutSuggestion | None:
    """Let the slice after a seam (``source`` model and layer, then ``target``'s) start at ``best_layer``,
    the target layer whose input is closest to the source's output; None when it already does."""
    if best_layer == target[1] or not stage.slices or slice_index >= len(stage.slices):
        return None
    edit = partial(set_slice_start, slice_index=slice_index, start=best_layer, num_layers=num_layers)
    joined = (edit(stage).slices or ())[slice_index].sources[0]
    label = layer_range_label(joined.start, joined.end).removeprefix("layers ").removeprefix("layer ")
    return CutSuggestion(f"Join {source[0]} {source[1]} to {target[0]} {label}: the closest inputs", edit)
