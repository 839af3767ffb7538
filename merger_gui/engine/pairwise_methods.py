"""Merge methods of exactly two models, one the base: NearSwap and Arcee Fusion.

Both follow mergekit 0.1.5's arithmetic in the working dtype. Arcee Fusion's mask is
float32 in mergekit, so its merged tensors come out in float32 (float64 for float64
inputs) whatever the inputs' precision. It estimates quartiles of large tensors from
a random sample drawn with ``torch.randint`` from ``inputs.generator`` (the global
generator when None), the draw mergekit makes from its seeded global generator.
"""

from __future__ import annotations

import torch

from .merge_inputs import MergeInputs

NEARSWAP_MIN_DIFFERENCE = 1e-6
FUSION_SOFTMAX_EPS = 1e-8
# Tensors with more elements than this get their quartiles from a sample of this size.
FUSION_QUANTILE_SAMPLE_SIZE = 1_000_000
FUSION_OUTLIER_SPREAD = 1.5


def _base_and_other(inputs: MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
    base = inputs.require_base()
    if len(inputs.tensors) != 2:
        raise inputs.fail(f"{inputs.method} takes the base and exactly one other model, got {len(inputs.tensors)}")
    return inputs.tensors[base], inputs.tensors[1 - base]


# --- NearSwap ----------------------------------------------------------------------------

def nearswap(inputs: MergeInputs) -> torch.Tensor:
    """Take the other model's value where it is within about ``t`` of the base's.

    Each entry moves from the base towards the other model by ``t / |base - other|``,
    clamped to [0, 1]: entries closer than ``t`` are swapped, distant ones barely move.
    """
    base, other = _base_and_other(inputs)
    t = float(inputs.shared_value("t"))
    distance = torch.abs(base - other).clamp(min=NEARSWAP_MIN_DIFFERENCE)
    weight = (t / distance).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


# --- Arcee Fusion ------------------------------------------------------------------------

def arcee_fusion(inputs: MergeInputs) -> torch.Tensor:
    """Take the other model's value where its change from the base is an outlier in importance.

    Importance is ``|other - base|`` scaled by the KL divergence of the softmaxed rows; the
    entries at or above ``median + 1.5 · IQR`` of it take the other model's value.
    """
    base, other = _base_and_other(inputs)
    importance = _fusion_importance(other, base)
    q1, median, q3 = _approximate_quartiles(importance, inputs.generator)
    mask = (importance >= median + FUSION_OUTLIER_SPREAD * (q3 - q1)).float()
    del importance
    return base + (other - base) * mask


def _fusion_importance(other: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|other - base|`` times the row-wise KL divergence of softmax(other) from softmax(base)."""
    difference = (other - base).abs()
    p = torch.softmax(other, dim=-1) + FUSION_SOFTMAX_EPS
    q = torch.softmax(base, dim=-1) + FUSION_SOFTMAX_EPS
    divergence = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return difference * divergence


def _approximate_quartiles(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The 25th, 50th and 75th percentiles of ``scores`` as sorted entries (index rounded down),
    over a sample drawn with replacement when the tensor is large."""
    flat = scores.reshape(-1)
    if flat.numel() > FUSION_QUANTILE_SAMPLE_SIZE:
        picks = torch.randint(flat.numel(), (FUSION_QUANTILE_SAMPLE_SIZE,), generator=generator, device=flat.device)
        flat = flat[picks]
    ordered = torch.sort(flat).values
    # float32 fractions times the last index, truncated, as mergekit rounds them.
    fractions = torch.tensor([0.25, 0.5, 0.75], device=ordered.device)
    return ordered[(fractions * (ordered.numel() - 1)).long()]
