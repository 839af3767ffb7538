"""Merges on the hypersphere: Multi-SLERP and the Karcher mean, with mergekit 0.1.5's arithmetic.

Both treat each flattened tensor as a direction times a norm, average the directions on the
unit sphere and scale the result by the weighted mean norm. They compute in the working dtype
with mergekit's order of operations; the Karcher mean takes its norms in float32 (float64 for
float64 inputs), as mergekit does. Reductions run over the same tensor layouts as mergekit's
(a stack of the flattened inputs, whole tensors), so their rounding matches too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .merge_inputs import MergeInputs

__all__ = ["AntipodalInputsError", "karcher_mean", "karcher_method", "multislerp", "multislerp_method"]


class AntipodalInputsError(ValueError):
    """The weighted mean of the unit inputs vanishes (e.g. ``a`` and ``-a`` with equal weights)."""


# --- Multi-SLERP ---------------------------------------------------------------------------

def multislerp_method(inputs: MergeInputs) -> torch.Tensor:
    """Multi-SLERP of the non-base inputs, around the base when the slice has one."""
    if inputs.base_model is not None and inputs.base_index is None:
        raise inputs.fail(f"multislerp needs the base model's tensor, but base model {inputs.base_model} lacks it")
    others = inputs.non_base()
    if not others:
        raise inputs.fail("multislerp needs at least one model besides the base")
    weights = [float(inputs.model_value(i, "weight")) for i in others]
    base_index = inputs.base_index
    try:
        return multislerp(
            [inputs.tensors[i] for i in others], weights,
            None if base_index is None else inputs.tensors[base_index],
            normalize_weights=bool(inputs.shared_value("normalize_weights")),
            eps=float(inputs.shared_value("eps")),
        )
    except AntipodalInputsError:
        raise inputs.fail("multislerp cannot merge these tensors: their weighted directions cancel out "
                          "(antipodal tensors with balancing weights); change a weight") from None


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None = None,
               *, normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Weighted barycentre of ``tensors`` on the hypersphere (of their offsets from ``base``).

    The unit directions are averaged in the tangent space at their normalised weighted mean
    and mapped back with the exponential map; the result has the weighted mean norm. A single
    tensor is returned as is; two directions that cancel out are interpolated linearly.

    Raises:
        AntipodalInputsError: when three or more directions cancel out.
    """
    if len(tensors) == 1:
        return tensors[0]
    shape = tensors[0].shape
    offsets = torch.stack(tuple(tensors))
    if base is not None:
        offsets -= base
    rows = offsets.view(len(tensors), -1)
    weight = torch.tensor(list(weights), dtype=rows.dtype, device=rows.device)
    if normalize_weights:
        weight = weight / weight.sum()
    column = weight.view(-1, 1)

    norms = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    units = rows / (norms + eps)
    mean = (units * column).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise AntipodalInputsError("the weighted mean of the unit tensors is zero")
        linear = (offsets[0] * weight[0] + offsets[1] * weight[1]).view(shape)
        return linear if base is None else linear + base
    del offsets, rows
    mean = mean / mean_norm

    # Project each direction onto the tangent space at the mean, then take the weighted sum.
    cosines = (units * mean).sum(-1, keepdim=True)
    tangent = (units.sub_(cosines * mean).mul_(column)).sum(0)
    del units
    angle = torch.linalg.vector_norm(tangent) + eps
    direction = mean * torch.cos(angle) + tangent * (torch.sin(angle) / angle)
    radius = (norms.squeeze(-1) * weight).sum()
    result = (direction * radius).view(shape)
    return result if base is None else result + base


# --- Karcher mean --------------------------------------------------------------------------

def karcher_method(inputs: MergeInputs) -> torch.Tensor:
    """Karcher mean of every input, the base model included as an ordinary input."""
    count = len(inputs.tensors)
    max_iter = inputs.shared_value("max_iter")
    if isinstance(max_iter, float) and max_iter.is_integer():
        max_iter = int(max_iter)  # a gradient's value; mergekit accepts whole floats
    if not isinstance(max_iter, int):
        raise inputs.fail(f"karcher parameter max_iter must be a whole number, got {max_iter!r}")
    return karcher_mean(inputs.tensors, [1.0 / count] * count, max_iter=max_iter,
                        tol=float(inputs.shared_value("tol")))


def karcher_mean(tensors: Sequence[torch.Tensor], alphas: Sequence[float], *, max_iter: int = 10,
                 tol: float = 1e-5) -> torch.Tensor:
    """Weighted Karcher (Fréchet) mean of the directions of ``tensors``, times their weighted mean norm.

    Tensors whose norm is at most ``tol`` take no part in the direction (their weight still
    scales the norm). Starting from the normalised weighted mean, at most ``max_iter`` Riemannian
    gradient steps are taken; iteration stops once the tangent update's norm is below ``tol``.
    A single tensor is returned as is; when every norm is at most ``tol`` the result is zero.
    """
    if len(tensors) == 1:
        return tensors[0]
    norm_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32

    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x.to(norm_dtype))

    norms = [norm(t) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else (t / n).to(t.dtype) for t, n in zip(tensors, norms)]
    kept = [i for i, n in enumerate(norms) if n.item() > tol]
    if not kept:
        return sum(t * 0 for t in tensors)  # type: ignore[return-value]  # zeros, NaN where an input is
    kept_total = sum(alphas[i] for i in kept)
    shares = [alphas[i] / kept_total for i in kept]
    directions = [units[i] for i in kept]

    mean = _initial_direction(directions, shares, norm, tol)
    for _ in range(max_iter):
        step = _tangent_step(mean, directions, shares, tol)
        step_norm = norm(step)
        if step_norm.item() < tol:
            break
        mean = (torch.cos(step_norm) * mean + torch.sin(step_norm) * (step / step_norm)).to(mean.dtype)
        mean_norm = norm(mean)
        if mean_norm.item() > tol:
            mean = (mean / mean_norm).to(mean.dtype)
    scale = sum(alpha * n for alpha, n in zip(alphas, norms))
    return scale * mean


def _initial_direction(directions: list[torch.Tensor], shares: list[float],
                       norm: Callable[[torch.Tensor], torch.Tensor], tol: float) -> torch.Tensor:
    """The normalised weighted mean of the unit directions; the first direction if it vanishes."""
    mean = torch.zeros_like(directions[0])
    for share, unit in zip(shares, directions):
        mean += share * unit
    mean_norm = norm(mean)
    if mean_norm.item() < tol:
        return directions[0].clone()
    return (mean / mean_norm).to(mean.dtype)


def _tangent_step(mean: torch.Tensor, directions: list[torch.Tensor], shares: list[float],
                  tol: float) -> torch.Tensor:
    """Weighted sum of the log maps of ``directions`` at ``mean`` (directions within ``tol`` skipped)."""
    step = torch.zeros_like(mean)
    flat_mean = mean.flatten()
    for share, unit in zip(shares, directions):
        cosine = torch.clamp(torch.dot(flat_mean, unit.flatten()), -1.0, 1.0)
        angle = torch.arccos(cosine)
        if angle.item() < tol:
            continue
        step += share * (angle / torch.sin(angle)) * (unit - cosine * mean)
    return step
