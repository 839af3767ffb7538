"""The tensor math of each merge method on small tensors, against hand-computed values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.engine.methods import merge_tensors, nuslerp, slerp  # noqa: E402


def merge(method, tensors, models, base=None, shared=None, per_model=None, **kwargs):
    per_model = per_model if per_model is not None else [{} for _ in tensors]
    return merge_tensors(method, tensors, models, base, shared or {}, per_model, tensor_name="w", **kwargs)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# --- passthrough ---------------------------------------------------------------------------

def test_passthrough_returns_the_input_and_applies_scale():
    x = t(1.0, -2.0, 3.0, dtype=torch.float16)
    assert merge("passthrough", [x], ["a"]) is x
    scaled = merge("passthrough", [x], ["a"], per_model=[{"scale": 0.5}])
    assert torch.equal(scaled, t(0.5, -1.0, 1.5, dtype=torch.float16))


def test_passthrough_refuses_two_sources():
    with pytest.raises(UserError, match="w: passthrough takes one source"):
        merge("passthrough", [t(1.0), t(2.0)], ["a", "b"])


# --- SLERP ---------------------------------------------------------------------------------

def test_slerp_of_orthogonal_vectors_follows_the_arc():
    a, b = t(1.0, 0.0), t(0.0, 1.0)
    result = merge("slerp", [a, b], ["a", "b"], "a", {"t": 0.5})
    assert torch.allclose(result, t(math.sqrt(0.5), math.sqrt(0.5)), atol=1e-7)


def test_slerp_t0_gives_base_and_t1_the_other_model_whatever_the_order():
    base, other = t(1.0, 2.0, -1.0), t(-3.0, 0.5, 2.0)
    assert torch.allclose(merge("slerp", [other, base], ["b", "a"], "a", {"t": 0.0}), base, atol=1e-6)
    assert torch.allclose(merge("slerp", [other, base], ["b", "a"], "a", {"t": 1.0}), other, atol=1e-6)


def test_slerp_interpolates_raw_tensors_without_renormalising():
    a, b = t(2.0, 0.0), t(0.0, 4.0)  # different norms: the result is not a unit vector
    theta = math.pi / 2
    expected = math.sin(0.75 * theta) / math.sin(theta) * a + math.sin(0.25 * theta) / math.sin(theta) * b
    assert torch.allclose(slerp(0.25, a, b), expected, atol=1e-6)


def test_slerp_falls_back_to_lerp_for_nearly_parallel_tensors():
    a = t(1.0, 0.0)
    b = t(3.0, 0.03)  # cos ≈ 0.99995 > 0.9995
    assert torch.equal(slerp(0.25, a, b), 0.75 * a + 0.25 * b)
    assert torch.equal(slerp(0.5, a, -a), torch.zeros(2))  # antiparallel: lerp too


def test_slerp_treats_zero_norm_tensors_as_unit_norm():
    zero, b = torch.zeros(3), t(1.0, 2.0, 2.0)
    # dot = 0 → θ = π/2; the zero tensor contributes nothing.
    result = slerp(0.5, zero, b)
    assert torch.allclose(result, math.sin(math.pi / 4) * b, atol=1e-6)
    assert torch.isfinite(slerp(0.3, zero, zero)).all()


def test_slerp_computes_in_float32_and_returns_the_input_dtype():
    a = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    b = torch.randn(32, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    result = slerp(0.3, a, b)
    assert result.dtype == torch.bfloat16 and result.shape == a.shape
    assert torch.equal(result, slerp(0.3, a.float(), b.float()).to(torch.bfloat16))


def test_slerp_copies_a_tensor_only_one_model_has():
    x = t(1.0, 2.0)
    assert merge("slerp", [x], ["b"], "a", {"t": 0.5}) is x


def test_slerp_needs_the_base_among_its_sources():
    with pytest.raises(UserError, match="w: slerp needs the base"):
        merge("slerp", [t(1.0), t(2.0)], ["a", "b"], "c", {"t": 0.5})


# --- linear --------------------------------------------------------------------------------

def test_linear_normalizes_by_the_weight_sum():
    result = merge("linear", [t(1.0, 2.0), t(3.0, 6.0)], ["a", "b"], None, {"normalize": True},
                   [{"weight": 1.0}, {"weight": 3.0}])
    assert torch.equal(result, t(2.5, 5.0))


def test_linear_without_normalize_is_the_weighted_sum():
    result = merge("linear", [t(1.0, 2.0), t(3.0, 6.0)], ["a", "b"], None, {"normalize": False},
                   [{"weight": 1.0}, {"weight": 3.0}])
    assert torch.equal(result, t(10.0, 20.0))


def test_linear_weights_summing_to_zero_are_a_user_error():
    with pytest.raises(UserError, match="w: linear weights sum to zero"):
        merge("linear", [t(1.0), t(3.0)], ["a", "b"], None, {"normalize": True}, [{"weight": 1.0}, {"weight": -1.0}])


def test_linear_needs_a_weight_for_every_model():
    with pytest.raises(UserError, match="'weight' is not set for b"):
        merge("linear", [t(1.0), t(3.0)], ["a", "b"], None, {}, [{"weight": 1.0}, {}])


def test_differing_shapes_are_a_user_error_naming_the_tensor():
    with pytest.raises(UserError, match=r"w: shapes differ between donors \(a \[2\], b \[3\]\)"):
        merge("linear", [t(1.0, 2.0), t(1.0, 2.0, 3.0)], ["a", "b"], None, {}, [{"weight": 1.0}] * 2)


# --- task arithmetic, TIES ------------------------------------------------------------------

TA_SHARED = {"normalize": False, "lambda": 1.0, "int8_mask": False, "rescale": False}


def test_task_arithmetic_adds_weighted_deltas_times_lambda():
    base, x, y = t(1.0, 1.0), t(2.0, 0.0), t(1.0, 3.0)
    result = merge("task_arithmetic", [base, x, y], ["base", "x", "y"], "base", dict(TA_SHARED, **{"lambda": 2.0}),
                   [{}, {"weight": 0.5}, {"weight": 0.25}])
    # deltas (1, -1) and (0, 2): 0.5·(1,-1) + 0.25·(0,2) = (0.5, 0); ×2 → (1, 0)
    assert torch.equal(result, t(2.0, 1.0))


def test_task_arithmetic_with_only_the_base_returns_it():
    base = t(1.0, 2.0)
    assert merge("task_arithmetic", [base], ["base"], "base", TA_SHARED, [{}]) is base


def test_ties_elects_the_sign_of_the_weighted_sum_and_averages_agreeing_deltas():
    base = torch.zeros(3)
    x, y = t(2.0, -1.0, 4.0), t(-1.0, 3.0, 2.0)
    result = merge("ties", [base, x, y], ["base", "x", "y"], "base", dict(TA_SHARED, normalize=True),
                   [{}, {"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}])
    # element 0: sum +1 → only x agrees → 2; element 1: sum +2 → only y → 3; element 2: both → 3
    assert torch.equal(result, t(2.0, 3.0, 3.0))


def test_ties_keeps_the_largest_density_fraction_of_each_delta():
    base = torch.zeros(4)
    x = t(0.1, -4.0, 0.2, 3.0)
    result = merge("ties", [base, x], ["base", "x"], "base", dict(TA_SHARED, normalize=True),
                   [{}, {"weight": 1.0, "density": 0.5}])
    assert torch.equal(result, t(0.0, -4.0, 0.0, 3.0))


# --- DARE ------------------------------------------------------------------------------------

def dare(method, density, seed, rescale=True):
    base = torch.zeros(20_000)
    x = torch.ones(20_000)
    generator = torch.Generator().manual_seed(seed)
    return merge(method, [base, x], ["base", "x"], "base", dict(TA_SHARED, rescale=rescale),
                 [{}, {"weight": 1.0, "density": density}], generator=generator)


def test_dare_is_reproducible_with_a_seeded_generator():
    assert torch.equal(dare("dare_linear", 0.3, seed=7), dare("dare_linear", 0.3, seed=7))
    assert not torch.equal(dare("dare_linear", 0.3, seed=7), dare("dare_linear", 0.3, seed=8))


def test_dare_keeps_a_density_fraction_and_rescales_to_the_l1_norm():
    result = dare("dare_ties", 0.3, seed=3)
    kept = result != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    assert torch.allclose(result.sum(), torch.tensor(20_000.0), rtol=1e-4)  # L1 norm of the delta
    assert torch.allclose(result[kept], result[kept][0])


def test_dare_without_rescale_keeps_raw_deltas():
    result = dare("dare_linear", 0.5, seed=1, rescale=False)
    assert set(result.unique().tolist()) == {0.0, 1.0}


# --- breadcrumbs, DELLA ------------------------------------------------------------------------

def test_breadcrumbs_drops_the_largest_gamma_share_then_the_smallest():
    base = torch.zeros(10)
    x = t(1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0, -10.0)
    per_model = [{}, {"weight": 1.0, "density": 0.5, "gamma": 0.2}]
    result = merge("breadcrumbs", [base, x], ["base", "x"], "base", TA_SHARED, per_model)
    # Keep 5 of 10: the 2 largest go as outliers, the 3 smallest as noise.
    assert torch.equal(result, t(0.0, 0.0, 0.0, -4.0, 5.0, -6.0, 7.0, -8.0, 0.0, 0.0))
    # Density 0.9 leaves room for one outlier only.
    per_model[1]["density"] = 0.9
    result = merge("breadcrumbs", [base, x], ["base", "x"], "base", TA_SHARED, per_model)
    assert torch.equal(result, x * (x.abs() < 10))


def test_breadcrumbs_ties_without_outliers_is_ties():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(8, 16, generator=g) for _ in range(3)]
    per_model = [{}, {"weight": 0.6, "density": 0.4, "gamma": 0.0}, {"weight": 0.5, "density": 0.7, "gamma": 0.0}]
    shared = dict(TA_SHARED, normalize=True)
    breadcrumbs = merge("breadcrumbs_ties", tensors, ["base", "x", "y"], "base", shared, per_model)
    assert torch.equal(breadcrumbs, merge("ties", tensors, ["base", "x", "y"], "base", shared, per_model))


def della(method, density, epsilon, seed, x, rescale=True):
    generator = torch.Generator().manual_seed(seed)
    return merge(method, [torch.zeros_like(x), x], ["base", "x"], "base", dict(TA_SHARED, rescale=rescale),
                 [{}, {"weight": 1.0, "density": density, "epsilon": epsilon}], generator=generator)


def test_della_keeps_larger_deltas_more_often_and_rescales_to_the_l1_norm():
    x = torch.arange(1, 20_001, dtype=torch.float32)  # one row, magnitudes rising
    result = della("della_linear", 0.5, 0.4, seed=3, x=x)
    kept = (result != 0).float()
    # Keep probability rises from 0.1 to 0.9 along the row.
    assert abs(kept[:2000].mean().item() - 0.14) < 0.03
    assert abs(kept[-2000:].mean().item() - 0.86) < 0.03
    assert torch.allclose(result.sum(), x.sum(), rtol=1e-4)


def test_della_with_epsilon_zero_draws_dare_masks():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(della("della_linear", 0.3, 0.0, seed=5, x=x), dare_of(x, 0.3, seed=5))
    assert not torch.equal(della("della_linear", 0.3, 0.0, seed=6, x=x), dare_of(x, 0.3, seed=5))


def dare_of(x, density, seed):
    generator = torch.Generator().manual_seed(seed)
    return merge("dare_linear", [torch.zeros_like(x), x], ["base", "x"], "base", dict(TA_SHARED, rescale=True),
                 [{}, {"weight": 1.0, "density": density}], generator=generator)


def test_della_at_full_density_is_task_arithmetic():
    x = torch.randn(16, generator=torch.Generator().manual_seed(2))
    shared = dict(TA_SHARED, normalize=True)
    result = merge("della", [torch.zeros(16), x], ["base", "x"], "base", shared,
                   [{}, {"weight": 0.5, "density": 1.0, "epsilon": 0.0}])
    assert torch.equal(result, merge("task_arithmetic", [torch.zeros(16), x], ["base", "x"], "base", shared,
                                     [{}, {"weight": 0.5}]))


def test_della_needs_density_plus_minus_epsilon_within_0_and_1():
    with pytest.raises(UserError, match="w: della needs density ± epsilon within"):
        della("della", 0.9, 0.15, seed=0, x=torch.ones(4))


# --- model stock -----------------------------------------------------------------------------

def test_model_stock_interpolates_by_the_mean_cosine_of_the_deltas():
    base = torch.zeros(2)
    w1, w2 = t(1.0, 0.0), t(1.0, 1.0)
    cos = 1 / math.sqrt(2)
    ratio = 2 * cos / (1 + cos)
    expected = ratio * (w1 + w2) / 2
    result = merge("model_stock", [base, w1, w2], ["base", "a", "b"], "base", {"filter_wise": False})
    assert torch.allclose(result, expected, atol=1e-6)


def test_model_stock_keeps_the_base_where_deltas_oppose():
    base = t(1.0, 1.0)
    result = merge("model_stock", [base, t(2.0, 1.0), t(0.0, 1.0)], ["base", "a", "b"], "base", {})
    assert torch.equal(result, base)  # cos = -1: singular denominator


def test_model_stock_filter_wise_uses_one_ratio_per_row():
    base = torch.zeros(2, 2)
    a = t(1.0, 0.0).repeat(2, 1)
    b = torch.stack([t(1.0, 0.0), t(0.0, 1.0)])
    result = merge("model_stock", [base, a, b], ["base", "a", "b"], "base", {"filter_wise": True})
    assert torch.allclose(result[0], t(1.0, 0.0))  # parallel row: ratio 1, the average
    assert torch.allclose(result[1], torch.zeros(2))  # orthogonal row: ratio 0, the base


def test_model_stock_needs_two_models_besides_the_base():
    with pytest.raises(UserError, match="model_stock needs the base and at least two"):
        merge("model_stock", [t(1.0), t(2.0)], ["base", "a"], "base", {})


# --- NuSLERP ---------------------------------------------------------------------------------

def test_nuslerp_t_is_the_second_weight_share():
    a, b = t(1.0, 0.0), t(0.0, 1.0)
    result = merge("nuslerp", [a, b], ["a", "b"], None, {}, [{"weight": 1.0}, {"weight": 3.0}])
    angle = 0.75 * math.pi / 2
    assert torch.allclose(result, t(math.cos(angle), math.sin(angle)), atol=1e-6)


def test_nuslerp_with_a_base_slerps_task_vectors():
    base = t(1.0, 1.0)
    a, b = t(2.0, 1.0), t(1.0, 2.0)
    result = merge("nuslerp", [base, a, b], ["base", "a", "b"], "base", {}, [{}, {"weight": 1.0}, {"weight": 1.0}])
    assert torch.allclose(result, base + math.sqrt(0.5) * t(1.0, 1.0), atol=1e-6)


def test_nuslerp_row_wise_and_per_row_modes():
    a = torch.eye(2)
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    per_row = nuslerp(0.5, a, b, flatten=False)
    assert torch.allclose(per_row, torch.full((2, 2), math.sqrt(0.5)), atol=1e-6)
    columns = nuslerp(0.5, a, b, row_wise=True, flatten=False)
    assert torch.allclose(columns, torch.full((2, 2), math.sqrt(0.5)), atol=1e-6)
    colinear = nuslerp(0.25, a, 2 * a, flatten=False)
    assert torch.allclose(colinear, 1.25 * a)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown merge method 'frobnicate'"):
        merge("frobnicate", [t(1.0)], ["a"])
