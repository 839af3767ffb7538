"""Per-layer values ↔ mergekit gradient lists, as pure functions: the shortest exact fit,
snapping, click insertion and the preset shapes.

mergekit reads a gradient of ``k`` values at slice position ``x`` piecewise-linearly at
``x·(k−1)`` (:func:`~merger_gui.core.parameters.interpolate_gradient`); layer ``i`` of a slice of
``n`` layers sits at ``x = i/(n−1)``. A *sample* is one ``(x, value)`` pair a gradient must give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .parameters import interpolate_gradient, slice_position
from .recipe import Gradient

DECIMALS = 4  # the finest precision values are written with (Alt: free dragging, typed values)
FREE_STEP = 10.0 ** -DECIMALS
MAX_DECIMALS = 12  # beyond this a fitted anchor is no longer readable; the fit gives up
Sample = tuple[float, float]
Fitted = float | Gradient
Bounds = tuple[float, float]
ANY: Bounds = (-math.inf, math.inf)


def step_decimals(step: float) -> int:
    """Decimals needed to write multiples of ``step`` (0.05 → 2, 0.0001 → 4)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def snap(value: float, step: float) -> float:
    """``value`` rounded to the nearest multiple of ``step``, written without float noise
    (a power of ten rounds as ``round(value, decimals)`` does, so the two always agree)."""
    decimals = step_decimals(step)
    if math.isclose(step, 10.0 ** -decimals):
        return round(value, decimals) + 0.0  # + 0.0: no -0.0
    return round(round(value / step) * step, decimals) + 0.0


def snap_step(bounds: tuple[float, float], fine: bool = False) -> float:
    """The snapping step for a parameter edited in ``bounds``: 0.05 (``fine``: 0.01) of a unit
    range, scaled by powers of ten for narrower or wider ranges (nearswap's t: 0.0005)."""
    span = bounds[1] - bounds[0]
    scale = 10.0 ** math.floor(math.log10(span)) if math.isfinite(span) and span > 0 else 1.0
    return round((0.01 if fine else 0.05) * scale, 12)


def row_positions(length: int) -> tuple[float, ...]:
    """The slice positions of the layers of a slice of ``length`` layers, as the plan reads them."""
    return tuple(slice_position(i, length) for i in range(length))


def evaluate(values: Sequence[float], x: float) -> float:
    """mergekit's value of gradient ``values`` at ``x``."""
    return float(interpolate_gradient(tuple(values), x))


def _weights(x: float, k: int) -> tuple[int, int, float]:
    """Anchors ``(i0, i1)`` read at ``x`` and the share of ``i1``, in mergekit's arithmetic."""
    scaled = x * (k - 1)
    i0 = min(int(scaled), k - 1)
    return i0, min(k - 1, i0 + 1), scaled - i0


def _solve_tridiagonal(lower: list[float], diag: list[float], upper: list[float],
                       rhs: list[float]) -> list[float] | None:
    """Thomas algorithm; None when the system is singular (an anchor no sample reads)."""
    n = len(diag)
    c, d = [0.0] * n, [0.0] * n
    for i in range(n):
        pivot = diag[i] - (lower[i] * c[i - 1] if i else 0.0)
        if abs(pivot) < 1e-12:
            return None
        c[i] = upper[i] / pivot if i < n - 1 else 0.0
        d[i] = (rhs[i] - (lower[i] * d[i - 1] if i else 0.0)) / pivot
    out = [0.0] * n
    for i in reversed(range(n)):
        out[i] = d[i] - (c[i] * out[i + 1] if i < n - 1 else 0.0)
    return out


def least_squares_anchors(samples: Sequence[Sample], k: int,
                          weights: Sequence[float] | None = None) -> list[float] | None:
    """The ``k`` evenly spaced anchors whose curve is closest (least squares) to ``samples``;
    None when some anchor is read by no sample."""
    weights = weights or [1.0] * len(samples)
    if k == 1:
        return [math.fsum(w * v for (_, v), w in zip(samples, weights)) / math.fsum(weights)]
    lower, diag, upper, rhs = [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k
    for (x, v), w in zip(samples, weights):
        i0, i1, frac = _weights(x, k)
        coefficients = {i0: 1 - frac}
        coefficients[i1] = coefficients.get(i1, 0.0) + frac
        for i, a in coefficients.items():
            rhs[i] += w * a * v
            for j, b in coefficients.items():
                if i == j:
                    diag[i] += w * a * b
                elif j == i + 1:
                    upper[i] += w * a * b
                else:
                    lower[i] += w * a * b
    return _solve_tridiagonal(lower, diag, upper, rhs)


def reproduces(values: Sequence[float], samples: Sequence[Sample], step: float = FREE_STEP) -> bool:
    """Whether gradient ``values`` gives every sample's value, both rounded to ``step``."""
    return all(snap(evaluate(values, x), step) == snap(v, step) for x, v in samples)


def _bare(values: Sequence[float]) -> Fitted:
    return values[0] + 0.0 if len(values) == 1 else tuple(v + 0.0 for v in values)


def fit_samples(samples: Sequence[Sample], step: float = FREE_STEP, bounds: Bounds = ANY) -> Fitted | None:
    """The shortest gradient (a scalar for one anchor) that gives every sample its value
    (within rounding to ``step``), anchors inside ``bounds`` (a value between layers must be
    valid too) and written in as few decimals as reproduce it; None when no list of at most
    as many anchors as distinct positions does."""
    if not samples:
        return None
    low, high = bounds
    for k in range(1, len({x for x, _ in samples}) + 1):
        anchors = least_squares_anchors(samples, k)
        if anchors is None:
            continue
        for decimals in range(MAX_DECIMALS + 1):
            candidate = [round(a, decimals) for a in anchors]
            if all(low <= a <= high for a in candidate) and reproduces(candidate, samples, step):
                return _bare(candidate)
    return None


def fit_row(row: Sequence[float], step: float = FREE_STEP, bounds: Bounds = ANY) -> Fitted | None:
    """The shortest gradient that gives the layers of one slice the values ``row``."""
    return fit_samples(list(zip(row_positions(len(row)), row)), step, bounds)


def insert_anchor(values: Sequence[float], x: float, value: float, bounds: Bounds = ANY) -> Gradient:
    """One more evenly spaced anchor than ``values``, the curve passing through ``(x, value)``
    and elsewhere as close as least squares keeps it to the old curve (anchors clamped to
    ``bounds``, which may keep it off a click near an edge of the range)."""
    k = len(values) + 1
    dense = [(i / (8 * k), evaluate(values, i / (8 * k))) for i in range(8 * k + 1)]
    anchors = least_squares_anchors([*dense, (x, value)], k, [1.0] * len(dense) + [1e6])
    assert anchors is not None  # dense samples read every anchor
    # The weight brings it close; the two anchors around x take the rest (least change).
    i0, i1, frac = _weights(x, k)
    miss = value - evaluate(anchors, x)
    if i0 == i1:
        anchors[i0] += miss
    else:
        norm = (1 - frac) ** 2 + frac ** 2
        anchors[i0] += miss * (1 - frac) / norm
        anchors[i1] += miss * frac / norm
    return tuple(round(min(bounds[1], max(bounds[0], a)), DECIMALS) + 0.0 for a in anchors)


# --- presets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A preset: ``shape(x)`` in [0, 1] over the slice, mapped onto ``low .. high``;
    ``anchors`` when it is piecewise linear (its own gradient where no layers are known)."""

    label: str
    shape: Callable[[float], float]
    anchors: tuple[float, ...] | None = None


def _linear(anchors: tuple[float, ...], label: str) -> Shape:
    return Shape(label, lambda x: evaluate(anchors, x), anchors)


PRESET_SAMPLES = 9  # anchors of a smooth shape where no layers are known
PRESETS: dict[str, Shape] = {
    "constant": _linear((0.0,), "Constant"),
    "linear": _linear((0.0, 1.0), "Linear up"),
    "linear down": _linear((1.0, 0.0), "Linear down"),
    "v": _linear((1.0, 0.0, 1.0), "V (GRAD_V)"),
    "inverted v": _linear((0.0, 1.0, 0.0), "Inverted V (GRAD_A)"),
    "smoothstep": Shape("Smoothstep", lambda x: x * x * (3 - 2 * x)),
    "cosine": Shape("Cosine (smooth V)", lambda x: (1 + math.cos(2 * math.pi * x)) / 2),
    "flat ends": _linear((0.0, 0.0, 1.0, 1.0, 0.0, 0.0), "Flat ends"),
    # supermerger's WRAP: the outer quarter of the layers at each end; RING: two soft bumps.
    "wrap": Shape("Wrap (outer quarters)", lambda x: 1.0 if x <= 0.25 or x >= 0.75 else 0.0),
    "ring": _linear((0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0), "Ring (two soft bumps)"),
}


def preset_gradient(preset: str, low: float, high: float, slices: Sequence[Sequence[float]] = ()) -> Fitted:
    """The gradient of ``preset`` from ``low`` to ``high``: the shortest that gives the layers
    at positions ``slices`` (one sequence per slice the gradient serves) the shape's values;
    where none does (slices of different lengths), or none are known, the shape's own anchors
    (a smooth one sampled at the longest slice's layers)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    shape = PRESETS[preset]

    def value(x: float) -> float:
        return round(low + (high - low) * shape.shape(x), DECIMALS)

    samples = [(x, value(x)) for positions in slices for x in positions]
    fitted = fit_samples(samples, bounds=(min(low, high), max(low, high))) if samples else None
    if fitted is not None:
        return fitted
    if shape.anchors is not None:
        return _bare([round(low + (high - low) * a, DECIMALS) for a in shape.anchors])
    count = max([len(p) for p in slices if len(p) > 1] or [PRESET_SAMPLES])
    return _bare([value(x) for x in row_positions(count)])


def invert(values: Sequence[float], bounds: tuple[float, float]) -> tuple[float, ...]:
    """Each value reflected within ``bounds`` (``t`` → 1 − t); exact on a gradient's anchors."""
    return tuple(round(bounds[0] + bounds[1] - v, DECIMALS) + 0.0 for v in values)


def mirror(values: Sequence[float]) -> tuple[float, ...]:
    """The curve reversed over the slice (first layer ↔ last); exact on evenly spaced anchors."""
    return tuple(reversed(values))
