"""Which methods draw random masks, and the order mergekit merges tensors in (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence

RANDOMIZED_METHODS = frozenset({"dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion"})


def random_draw_order(sources: Sequence[Sequence[str]]) -> list[int]:
    """Indices of a stage's output tensors in the order mergekit 0.1.5 merges them.

    mergekit schedules each tensor by the greatest of its input tensor names, in string
    order, vocabulary tensors rebuilt by a tokenizer section included. A randomized method
    must merge in this order to draw the masks mergekit draws; ties keep plan order
    (mergekit breaks them by graph insertion order).

    Args:
        sources: Input tensor names of each output tensor, in plan order.
    """
    return sorted(range(len(sources)), key=lambda i: (max(sources[i], default=""), i))
