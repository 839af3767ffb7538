"""Which methods draw random masks, and the order mergekit merges tensors in (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence

RANDOMIZED_METHODS = frozenset({"dare_ties", "dare_linear"})


def random_draw_order(names: Sequence[str], sources: Sequence[Sequence[str]],
                      vocab_aligned: Sequence[bool]) -> list[int]:
    """Indices of a stage's output tensors in the order mergekit 0.1.5 merges them.

    mergekit schedules each tensor by the greatest of its input tensor names (an empty
    label for vocabulary tensors rebuilt by a tokenizer section), in string order. A
    randomized method must merge in this order to draw the masks mergekit draws; ties
    keep plan order (mergekit breaks them by graph insertion order).

    Args:
        names: Output tensor names in plan order.
        sources: Input tensor names of each output tensor.
        vocab_aligned: Whether each tensor's rows are rebuilt to an output vocabulary.
    """
    def label(i: int) -> str:
        return "" if vocab_aligned[i] else max(sources[i], default="")

    return sorted(range(len(names)), key=lambda i: (label(i), i))
