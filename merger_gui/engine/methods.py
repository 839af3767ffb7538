"""The tensor math of every merge method, with mergekit 0.1.5's arithmetic.

:func:`merge_tensors` merges the inputs of one output tensor. It follows mergekit's
order of operations and working precision so results match it bit for bit where
the arithmetic allows: SLERP and linear compute in float32 (float64 for float64
inputs) and round back to the input dtype; the task-arithmetic family, model stock
and NuSLERP compute in the input dtype itself, as mergekit does.

DARE and DELLA draw their keep-masks with ``torch.bernoulli`` from ``generator`` (the
global generator when None). mergekit seeds the global generator once per run
(``--random-seed``) and merges tensors in the order of :func:`random_draw_order`;
merging in that order from a generator seeded with the same number gives the same
masks, hence the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from merger_gui.core.errors import UserError

from .draw_order import RANDOMIZED_METHODS, random_draw_order
from .merge_inputs import MergeInputs
from .pairwise_methods import arcee_fusion, nearswap
from .spherical_methods import karcher_method, multislerp_method
from .task_vector_methods import ram, ramplus_tl, sce, sign_agreement

__all__ = ["RANDOMIZED_METHODS", "merge_tensors", "nuslerp", "random_draw_order", "slerp"]

SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8
# mergekit walks flattened tensors in chunks of this many elements; norms and dot
# products are summed per chunk, so the chunking is part of the rounding.
SLERP_CHUNK_ELEMENTS = 1024 * 1024


def merge_tensors(
    method: str,
    tensors: Sequence[torch.Tensor],
    models: Sequence[str],
    base_model: str | None,
    shared: Mapping[str, Any],
    per_model: Sequence[Mapping[str, Any]],
    *,
    tensor_name: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge the inputs of one output tensor.

    Args:
        method: Merge method name (``passthrough``, ``slerp``, ``linear``, ``task_arithmetic``,
            ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs``, ``breadcrumbs_ties``,
            ``della``, ``della_linear``, ``model_stock``, ``nuslerp``).
        tensors: The inputs, already cast to the working dtype, one per model.
        models: The model reference of each input.
        base_model: The slice's base model, or None.
        shared: Evaluated shared parameters (``t``, ``normalize``, ``lambda``…).
        per_model: Evaluated per-model parameters of each input (``weight``, ``density``…).
        tensor_name: Output tensor name, for error messages.
        generator: Random source of DARE's and DELLA's masks (the global generator when None).

    Returns:
        The merged tensor in the working dtype (the promoted dtype of the inputs).

    Raises:
        UserError: on inputs a recipe can cause: wrong input count, missing base or
            parameter, differing shapes, weights summing to zero.
    """
    if len(tensors) != len(models) or len(per_model) != len(models):
        raise ValueError("tensors, models and per_model must have the same length")
    if not tensors:
        raise UserError(f"{tensor_name}: no donor has this tensor")
    merge = _METHODS.get(method.lower())
    if merge is None:
        raise UserError(f"{tensor_name}: unknown merge method {method!r}")
    inputs = MergeInputs(method.lower(), tensor_name, _promoted(tensors), tuple(models), base_model,
                     shared, tuple(per_model), generator)
    if method.lower() != "passthrough":
        buffer = inputs.non_floating_buffer()
        if buffer is not None:
            return buffer
        if len(tensors) == 1 and inputs.singleton_copies():
            return inputs.tensors[0]
    inputs.check_shapes()
    return merge(inputs)


def _promoted(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --- passthrough -------------------------------------------------------------------------

def _passthrough(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) != 1:
        raise inputs.fail(f"passthrough takes one source per slice, got {len(inputs.tensors)}")
    scale = inputs.per_model[0].get("scale")  # no default: unscaled
    tensor = inputs.tensors[0]
    if scale is None or not tensor.is_floating_point():
        return tensor
    return tensor * float(scale)


# --- SLERP -------------------------------------------------------------------------------

def _slerp_method(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) != 2:
        raise inputs.fail(f"slerp takes exactly two sources, got {len(inputs.tensors)}")
    base = inputs.require_base()
    t = float(inputs.shared_value("t"))
    return slerp(t, inputs.tensors[base], inputs.tensors[1 - base])


def _column_chunks(width: int) -> Iterator[slice]:
    for start in range(0, width, SLERP_CHUNK_ELEMENTS):
        yield slice(start, min(start + SLERP_CHUNK_ELEMENTS, width))


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``v0`` (t = 0) to ``v1`` (t = 1) over the flattened tensors.

    Computes in float32 (float64 for float64 inputs) in bounded chunks; falls back to the
    lerp when the normalised tensors are (anti)parallel (|cos| > 0.9995); a norm ≤ 1e-8
    counts as 1. The result has ``v0``'s dtype.
    """
    dtype = _work_dtype(v0)
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=dtype).reshape(-1, 1)
    if a.shape[1] == 0:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    # Two reused scratch chunks: a fresh multi-MB tensor per operation costs page faults
    # that dominate the arithmetic. In-place steps round exactly like mergekit's.
    width = min(a.shape[1], SLERP_CHUNK_ELEMENTS)
    scratch_a = torch.empty((1, width), dtype=dtype, device=a.device)
    scratch_b = torch.empty((1, width), dtype=dtype, device=a.device)

    def load(scratch: torch.Tensor, x: torch.Tensor, columns: slice) -> torch.Tensor:
        chunk = scratch[:, : columns.stop - columns.start]
        return chunk.copy_(x[:, columns])

    def norm(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        # The norm of per-chunk norms, as mergekit sums them.
        parts = [torch.linalg.vector_norm(load(scratch, x, c), dim=1, keepdim=True)
                 for c in _column_chunks(x.shape[1])]
        total = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(total > SLERP_NORM_EPS, total, 1)

    norm_a, norm_b = norm(a, scratch_a), norm(b, scratch_b)
    dots = []
    for columns in _column_chunks(a.shape[1]):
        x = load(scratch_a, a, columns).div_(norm_a)
        y = load(scratch_b, b, columns).div_(norm_b)
        dots.append(x.mul_(y).sum(dim=1, keepdim=True))
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > SLERP_DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)

    result = torch.empty_like(a)
    for columns in _column_chunks(a.shape[1]):
        x = load(scratch_a, a, columns).mul_(coef_a)
        x.add_(load(scratch_b, b, columns).mul_(coef_b))
        result[:, columns] = x
    return result.reshape(v0.shape)


# --- linear ------------------------------------------------------------------------------

def _linear(inputs: MergeInputs) -> torch.Tensor:
    first = inputs.tensors[0]
    dtype = _work_dtype(first)
    weights = [float(inputs.model_value(i, "weight")) for i in range(len(inputs.tensors))]
    coefficient_shape = (1,) * first.ndim
    weight = torch.tensor(weights, dtype=dtype)
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(inputs.tensors, weight.unbind(0)):
        result.addcmul_(tensor, coefficient.reshape(coefficient_shape))
    if inputs.shared_value("normalize"):
        denominator = weight.reshape(1, -1).sum(dim=1)
        if denominator == 0:
            raise inputs.fail("linear weights sum to zero; set normalize: false or change a weight")
        result.div_(denominator.reshape(coefficient_shape))
    return result.to(first.dtype)


# --- task arithmetic, TIES, DARE, breadcrumbs, DELLA ---------------------------------------

def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """``tensor * mask``, rescaled to the L1 norm of ``tensor`` when ``rescale``."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _flat_magnitudes(delta: torch.Tensor) -> torch.Tensor:
    """``|delta|`` flattened, in float32 on the CPU: the values mergekit sorts (ties break alike)."""
    magnitudes = delta.abs().reshape(-1)
    return magnitudes.float() if magnitudes.device.type == "cpu" else magnitudes


def _bernoulli_dtype(delta: torch.Tensor) -> torch.dtype:
    # CPU bernoulli has no float16 kernel: mergekit draws in float32 except for bfloat16.
    cpu_upcast = delta.device.type == "cpu" and delta.dtype != torch.bfloat16
    return torch.float32 if cpu_upcast else delta.dtype


def _magnitude_prune(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the ``density`` fraction of entries largest in magnitude (at least one)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    largest = torch.argsort(_flat_magnitudes(delta), descending=True)[:keep]  # before the mask: a smaller peak
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[largest] = 1
    return _rescaled(delta, mask.reshape_as(delta), rescale)


def _outlier_prune(delta: torch.Tensor, density: float, gamma: float, rescale: bool) -> torch.Tensor:
    """Keep the ``density`` fraction of entries below the ``gamma`` fraction largest in magnitude
    (Model Breadcrumbs); fewer outliers are dropped where both fractions cannot hold."""
    if density >= 1:
        return delta
    count = delta.numel()
    keep = int(density * count)
    smallest = max(0, count - keep - int(gamma * count))
    ascending = torch.sort(_flat_magnitudes(delta), descending=False).indices
    mask = torch.zeros(count, dtype=delta.dtype, device=delta.device)
    mask[ascending[smallest:smallest + keep]] = 1
    return _rescaled(delta, mask.reshape_as(delta), rescale)


def _random_prune(delta: torch.Tensor, density: float, rescale: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry with probability ``density`` (DARE)."""
    if density >= 1:
        return delta
    work = _bernoulli_dtype(delta)
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    return _rescaled(delta.to(work), mask, rescale).to(delta.dtype)


def _ranked_random_prune(delta: torch.Tensor, density: float, epsilon: float, rescale: bool,
                         generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry with a probability rising linearly with its magnitude rank in its row,
    from ``density - epsilon`` to ``density + epsilon`` (DELLA's MagPrune)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    work = _bernoulli_dtype(delta)
    rows = delta if delta.ndim >= 2 else delta.unsqueeze(0)
    mask = _rank_keep_mask(rows, density, epsilon, work, generator)
    return _rescaled(rows.to(work), mask, rescale).to(delta.dtype).reshape(delta.shape)


def _rank_keep_mask(rows: torch.Tensor, density: float, epsilon: float, work: torch.dtype,
                    generator: torch.Generator | None) -> torch.Tensor:
    """DELLA's keep-mask of ``rows`` in ``work``; its full-size ranks are freed on return."""
    # Ranks 1…n in the working dtype, which rounds them in bfloat16 just as mergekit does.
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    lowest = ranks.min(dim=1, keepdim=True).values
    highest = ranks.max(dim=1, keepdim=True).values
    position = ((ranks - lowest) / (highest - lowest)).clamp(0, 1)
    probabilities = (density - epsilon) + position * 2 * epsilon
    return torch.bernoulli(probabilities, generator=generator).to(work)


_Sparsifier = Callable[[MergeInputs, int, torch.Tensor, bool], torch.Tensor]


def _density(inputs: MergeInputs, index: int) -> float:
    return float(inputs.model_value(index, "density"))


def _keep_largest(inputs: MergeInputs, index: int, delta: torch.Tensor, rescale: bool) -> torch.Tensor:
    return _magnitude_prune(delta, _density(inputs, index), rescale)


def _keep_random(inputs: MergeInputs, index: int, delta: torch.Tensor, rescale: bool) -> torch.Tensor:
    return _random_prune(delta, _density(inputs, index), rescale, inputs.generator)


def _keep_below_outliers(inputs: MergeInputs, index: int, delta: torch.Tensor, rescale: bool) -> torch.Tensor:
    gamma = float(inputs.model_value(index, "gamma"))
    return _outlier_prune(delta, _density(inputs, index), gamma, rescale)


def _keep_by_rank(inputs: MergeInputs, index: int, delta: torch.Tensor, rescale: bool) -> torch.Tensor:
    density = _density(inputs, index)
    epsilon = float(inputs.model_value(index, "epsilon"))
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise inputs.fail(f"{inputs.method} needs density ± epsilon within (0, 1), got density {density} "
                          f"and epsilon {epsilon} for {inputs.models[index]}")
    return _ranked_random_prune(delta, density, epsilon, rescale, inputs.generator)


@dataclass(frozen=True)
class _DeltaRule:
    """How a task-arithmetic method sparsifies each delta, and whether TIES' sign election filters them."""

    sparsify: _Sparsifier | None
    consensus: bool


_TASK_ARITHMETIC_RULES: dict[str, _DeltaRule] = {
    "task_arithmetic": _DeltaRule(None, consensus=False),
    "ties": _DeltaRule(_keep_largest, consensus=True),
    "dare_ties": _DeltaRule(_keep_random, consensus=True),
    "dare_linear": _DeltaRule(_keep_random, consensus=False),
    "breadcrumbs": _DeltaRule(_keep_below_outliers, consensus=False),
    "breadcrumbs_ties": _DeltaRule(_keep_below_outliers, consensus=True),
    "della": _DeltaRule(_keep_by_rank, consensus=True),
    "della_linear": _DeltaRule(_keep_by_rank, consensus=False),
}


def _task_arithmetic_family(inputs: MergeInputs) -> torch.Tensor:
    base_index = inputs.require_base()
    base = inputs.tensors[base_index]
    others = inputs.non_base()
    if not others:
        return base
    rule = _TASK_ARITHMETIC_RULES[inputs.method]
    rescale = bool(inputs.shared_value("rescale"))

    deltas = base.new_empty((len(others), *base.shape))
    for row, i in enumerate(others):
        delta = inputs.tensors[i] - base
        if rule.sparsify is not None:
            delta = rule.sparsify(inputs, i, delta, rescale)
        deltas[row] = delta
        del delta

    weights = torch.tensor([float(inputs.model_value(i, "weight")) for i in others], dtype=deltas.dtype)
    weights = weights.reshape((len(others),) + (1,) * base.ndim)
    deltas.mul_(weights)

    if rule.consensus:
        mask_dtype = torch.int8 if inputs.shared_value("int8_mask") else base.dtype
        # In place on our own tensors: the same products without two more stacks of deltas.
        mask = sign_agreement(deltas, mask_dtype).to(deltas.dtype)
        mixed = deltas.mul_(mask).sum(dim=0)
        divisor = mask.mul_(weights).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1

    if inputs.shared_value("normalize"):
        mixed /= divisor
    scale = float(inputs.shared_value("lambda"))
    if scale != 1:
        mixed *= scale
    return (base + mixed).to(base.dtype)


# --- model stock -------------------------------------------------------------------------

def _model_stock(inputs: MergeInputs) -> torch.Tensor:
    base_index = inputs.require_base()
    others = inputs.non_base()
    if len(others) < 2:
        raise inputs.fail(f"model_stock needs the base and at least two other models, got {len(others) + 1}")
    w0 = inputs.tensors[base_index]
    ws = [inputs.tensors[i] for i in others]
    out_shape = w0.shape
    if inputs.shared_value("filter_wise"):
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]

    offsets = [w - w0 for w in ws]
    cosines = []
    for k, a in enumerate(offsets):
        for b in offsets[k + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # A vanishing denominator has no finite estimate: keep the base there.
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    average = ws[0]
    for w in ws[1:]:
        average = average + w
    average = average / n
    return (t * average + (1 - t) * w0).reshape(out_shape)


# --- NuSLERP -----------------------------------------------------------------------------

def _nuslerp_method(inputs: MergeInputs) -> torch.Tensor:
    others = inputs.non_base()
    if len(others) != 2:
        raise inputs.fail(f"nuslerp takes exactly two models besides the base, got {len(others)}")
    w = [float(inputs.model_value(i, "weight")) for i in others]
    total = w[0] + w[1]
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    row_wise = bool(inputs.shared_value("nuslerp_row_wise"))
    flatten = bool(inputs.shared_value("nuslerp_flatten"))
    a, b = (inputs.tensors[i] for i in others)
    base_index = inputs.base_index
    if base_index is None:
        return nuslerp(t, a, b, row_wise=row_wise, flatten=flatten)
    base = inputs.tensors[base_index]
    return base + nuslerp(t, a - base, b - base, row_wise=row_wise, flatten=flatten)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, row_wise: bool = False,
            flatten: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """NuSLERP's interpolation in the inputs' dtype: over the flattened tensors, over
    rows of the last dimension, or (``row_wise``) over columns of the first."""
    out_shape = v0.shape
    transposed = row_wise and not flatten
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif transposed:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if transposed:
        result = result.transpose(0, -1)
    return result.reshape(out_shape)


_METHODS: dict[str, Callable[[MergeInputs], torch.Tensor]] = {
    "passthrough": _passthrough,
    "slerp": _slerp_method,
    "linear": _linear,
    **dict.fromkeys(_TASK_ARITHMETIC_RULES, _task_arithmetic_family),
    "model_stock": _model_stock,
    "nuslerp": _nuslerp_method,
    "nearswap": nearswap,
    "arcee_fusion": arcee_fusion,
    "sce": sce,
    "ram": ram,
    "ramplus_tl": ramplus_tl,
    "multislerp": multislerp_method,
    "karcher": karcher_method,
}
