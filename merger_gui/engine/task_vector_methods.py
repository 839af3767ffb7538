"""SCE and RAM: task-vector merges that weigh deltas by their energy or count their overlap.

Each function merges the inputs of one output tensor with mergekit 0.1.5's arithmetic:
the same operations, in the same order, on tensors of the same dtypes, so results match
it bit for bit. All steps run in the working dtype, except RAM+'s per-model boost, a
float32 tensor: its product promotes half-precision deltas, and the result, to float32
(mergekit stores that float32 result unless ``out_dtype`` is set).

None of these methods draws random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .merge_inputs import MergeInputs

__all__ = ["ram", "ramplus_tl", "sce", "sign_agreement"]

SCE_MIN_DIVISOR = 1e-6
SCE_MIN_TOTAL_WEIGHT = 1e-6


def _stacked_deltas(inputs: MergeInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base and the task vectors of the other models stacked on a leading axis (None
    when the base is the only input)."""
    base = inputs.tensors[inputs.require_base()]
    others = inputs.non_base()
    if not others:
        return base, None
    return base, torch.stack([inputs.tensors[i] - base for i in others], dim=0)


# --- SCE ---------------------------------------------------------------------------------

def sce(inputs: MergeInputs) -> torch.Tensor:
    """Select the elements whose deltas vary most across models, weigh each model by its
    mean squared delta, and average the deltas agreeing with the elected sign."""
    base, deltas = _stacked_deltas(inputs)
    if deltas is None:
        return base
    mask_dtype = torch.int8 if bool(inputs.shared_value("int8_mask")) else base.dtype
    share = float(inputs.shared_value("select_topk"))
    if share < 1:
        deltas = deltas * _top_variance_mask(deltas, share, mask_dtype)
    agreeing = sign_agreement(deltas, mask_dtype)
    weights = _energy_shares(deltas).reshape((-1,) + (1,) * base.ndim)
    kept = agreeing.to(deltas.dtype).mul_(weights)  # in place: one stack of deltas less
    merged = deltas.mul_(kept).sum(dim=0)
    return base + merged / kept.sum(dim=0).clamp(min=SCE_MIN_DIVISOR)


def _top_variance_mask(deltas: torch.Tensor, share: float, mask_dtype: torch.dtype) -> torch.Tensor:
    """1 at the ``share`` of elements (of those that vary at all) whose deltas vary most
    across models, 0 elsewhere; ties fall as ``torch.topk`` breaks them."""
    mask = torch.zeros_like(deltas[0], dtype=mask_dtype)
    if share <= 0:
        return mask
    variance = torch.var(deltas, dim=0, unbiased=False)
    # The count times the share is a float32 product, truncated: as mergekit rounds it.
    keep = int(torch.count_nonzero(variance) * share)
    if keep == 0:
        return mask
    _, top = torch.topk(variance.reshape(-1), k=keep, largest=True)
    mask.view(-1)[top] = 1
    return mask


def sign_agreement(deltas: torch.Tensor, mask_dtype: torch.dtype) -> torch.Tensor:
    """Where each delta's sign agrees with the sign of the summed deltas (TIES election)."""
    sign = deltas.sign().to(mask_dtype)
    elected = (deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    return sign == elected


def _energy_shares(deltas: torch.Tensor) -> torch.Tensor:
    """Each model's mean squared delta as a share of their sum (equal shares when the
    sum vanishes)."""
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = energy.sum().item()
    if abs(total) < SCE_MIN_TOTAL_WEIGHT:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


# --- RAM ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Contributions:
    """Which models change each element by more than ``epsilon``, over flattened deltas."""

    deltas: torch.Tensor  # (models, elements), zero where a model does not contribute
    contributes: torch.Tensor  # bool (models, elements)
    counts: torch.Tensor  # int32 (1, elements): contributing models per element
    unique: torch.Tensor  # bool (1, elements): exactly one model contributes
    overlap: torch.Tensor  # bool (1, elements): several models contribute
    epsilon: float

    @classmethod
    def of(cls, deltas: torch.Tensor, epsilon: float) -> _Contributions:
        flat = deltas.view(deltas.shape[0], -1)
        contributes = flat.abs() > epsilon
        # int32, not sum's int64: a count of models divides alike in half the memory.
        counts = contributes.sum(dim=0, keepdim=True, dtype=torch.int32)
        return cls(flat.mul_(contributes), contributes, counts, counts == 1, counts > 1, epsilon)

    def overlap_mean(self) -> torch.Tensor:
        """The deltas on shared elements divided by their number of contributors."""
        return (self.deltas * self.overlap).div_(self.counts.clamp(min=1))  # in place: one full-size copy less


def _contributions(inputs: MergeInputs) -> tuple[torch.Tensor, _Contributions | None]:
    base, deltas = _stacked_deltas(inputs)
    if deltas is None:
        return base, None
    return base, _Contributions.of(deltas, float(inputs.shared_value("epsilon")))


def ram(inputs: MergeInputs) -> torch.Tensor:
    """Reinforced agent merging: keep each delta no other model overlaps, and average
    the contributing deltas where models overlap."""
    base, parts = _contributions(inputs)
    if parts is None:
        return base
    merged = (parts.deltas * parts.unique + parts.overlap_mean()).sum(dim=0)
    return base + merged.reshape_as(base)


def ramplus_tl(inputs: MergeInputs) -> torch.Tensor:
    """RAM+ within one tensor: RAM with each model's unique deltas scaled by
    ``1 + r * clamp(shared / unique, 0, alpha)``, from that model's counts of overlapped
    and unique elements."""
    base, parts = _contributions(inputs)
    if parts is None:
        return base
    r = float(inputs.shared_value("r"))
    alpha = float(inputs.shared_value("alpha"))
    shared_counts = _row_counts(parts.contributes & parts.overlap)
    unique_counts = _row_counts(parts.contributes & parts.unique)
    # An int64 count clamped to a float bound is float32: the boost is a float32 tensor.
    ratio = shared_counts / unique_counts.clamp(min=parts.epsilon)
    boost = 1 + r * ratio.clamp(min=0, max=alpha)
    # The overlap first and added in place: no second float32 copy of the deltas.
    overlap = parts.overlap_mean()
    merged = (parts.deltas * parts.unique * boost.unsqueeze(-1)).add_(overlap).sum(dim=0)
    return base + merged.reshape_as(base)


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """int64 count of the set elements of each row, without ``sum``'s int64 copy of ``mask``."""
    return torch.stack([torch.count_nonzero(row) for row in mask])
