"""Multi-SLERP and the Karcher mean on small tensors, and the recipe checks made for them."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.core.profiles import load_profile  # noqa: E402
from merger_gui.core.recipe import ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage  # noqa: E402
from merger_gui.core.validation import validate_recipe  # noqa: E402
from merger_gui.engine.methods import merge_tensors, slerp  # noqa: E402
from merger_gui.engine.spherical_methods import karcher_mean, multislerp  # noqa: E402

LLAMA = load_profile("llama-2-7b")


def merge(method, tensors, models, base=None, shared=None, per_model=None):
    per_model = per_model if per_model is not None else [{} for _ in tensors]
    return merge_tensors(method, tensors, models, base, shared or {}, per_model, tensor_name="w")


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def unit_at(angle: float) -> torch.Tensor:
    return t(math.cos(angle), math.sin(angle), 0.0)


# --- Multi-SLERP ---------------------------------------------------------------------------

def test_multislerp_of_two_unit_vectors_with_equal_weights_is_slerp_halfway():
    a, b = unit_at(0.2), unit_at(1.4)
    result = merge("multislerp", [a, b], ["a", "b"], per_model=[{"weight": 1.0}, {"weight": 1.0}])
    assert torch.allclose(result, slerp(0.5, a, b), atol=1e-6)


def test_multislerp_has_the_weighted_mean_norm_and_a_direction_between_the_inputs():
    a, b = 3 * unit_at(0.0), unit_at(math.pi / 2)
    result = merge("multislerp", [a, b], ["a", "b"], per_model=[{"weight": 1.0}, {"weight": 3.0}])
    assert torch.linalg.vector_norm(result).item() == pytest.approx(0.25 * 3 + 0.75 * 1, rel=1e-6)
    assert result[0] > 0 and result[1] > result[0]  # between a and b, nearer b (the heavier)


def test_multislerp_without_normalized_weights_scales_by_the_raw_weight_sum():
    a, b = t(2.0, 0.0), t(4.0, 0.0)
    per_model = [{"weight": 1.0}, {"weight": 1.0}]
    assert torch.allclose(merge("multislerp", [a, b], ["a", "b"], per_model=per_model), t(3.0, 0.0))
    unnormalized = merge("multislerp", [a, b], ["a", "b"], shared={"normalize_weights": False}, per_model=per_model)
    assert torch.allclose(unnormalized, t(6.0, 0.0))


def test_multislerp_with_a_base_interpolates_the_offsets_from_it():
    base, a, b = t(1.0, 1.0, 1.0), t(2.0, 1.0, 1.0), t(1.0, 3.0, 1.0)
    result = merge("multislerp", [a, base, b], ["a", "base", "b"], "base",
                   per_model=[{"weight": 1.0}, {}, {"weight": 1.0}])
    assert torch.equal(result, base + multislerp([a - base, b - base], [1.0, 1.0]))
    # Offsets (1, 0, 0) and (0, 2, 0): halfway in direction, of mean norm 1.5.
    assert torch.allclose(result - base, 1.5 * t(math.sqrt(0.5), math.sqrt(0.5), 0.0), atol=1e-6)


def test_multislerp_returns_a_lone_model_as_is_even_with_a_base():
    base, a = t(1.0, 2.0), t(5.0, -1.0)
    assert torch.equal(merge("multislerp", [base, a], ["base", "a"], "base", per_model=[{}, {"weight": 0.3}]), a)


def test_multislerp_needs_a_model_besides_the_base_and_the_base_tensor():
    with pytest.raises(UserError, match="at least one model besides the base"):
        merge("multislerp", [t(1.0)], ["base"], "base")
    with pytest.raises(UserError, match="base model base"):
        merge("multislerp", [t(1.0), t(2.0)], ["a", "b"], "base", per_model=[{"weight": 1.0}, {"weight": 1.0}])


def test_multislerp_of_cancelling_directions_interpolates_two_and_refuses_three():
    a = t(1.0, 2.0)
    two = merge("multislerp", [a, -a], ["a", "b"], per_model=[{"weight": 1.0}, {"weight": 1.0}])
    assert torch.equal(two, torch.zeros(2))
    with pytest.raises(UserError, match="cancel out"):
        merge("multislerp", [a, -a, 0 * a], ["a", "b", "c"], per_model=[{"weight": 1.0}] * 3)


# --- Karcher mean --------------------------------------------------------------------------

def test_karcher_of_identical_tensors_returns_them():
    x = t(0.5, -2.0, 3.0)
    assert torch.allclose(merge("karcher", [x, x, x], ["a", "b", "c"]), x, atol=1e-6)


def test_karcher_mean_of_two_directions_is_their_slerp():
    a, b = unit_at(0.0), unit_at(1.2)
    assert torch.allclose(karcher_mean([a, b], [0.75, 0.25], tol=1e-9), slerp(0.25, a, b), atol=1e-6)


def test_karcher_counts_the_base_as_an_ordinary_input():
    a, b, base = unit_at(0.0), unit_at(1.0), unit_at(2.0)
    with_base = merge("karcher", [a, b, base], ["a", "b", "base"], "base")
    assert torch.allclose(with_base, unit_at(1.0), atol=1e-6)  # the middle of the three directions


def test_karcher_leaves_zero_tensors_out_of_the_direction_but_not_the_norm():
    x, zero = t(3.0, 4.0), torch.zeros(2)
    assert torch.allclose(merge("karcher", [x, zero], ["a", "b"]), x / 2)
    assert torch.equal(merge("karcher", [zero, zero], ["a", "b"]), zero)


def test_karcher_max_iter_bounds_the_refinement():
    a, b, c = unit_at(0.0), unit_at(0.3), unit_at(2.5)
    euclidean = (a + b + c) / torch.linalg.vector_norm(a + b + c)
    refined = karcher_mean([a, b, c], [1 / 3] * 3, max_iter=50, tol=1e-9)
    assert torch.allclose(karcher_mean([a, b, c], [1 / 3] * 3, max_iter=0), euclidean, atol=1e-6)
    assert not torch.allclose(refined, euclidean, atol=1e-3)
    # At the Karcher mean the weighted log maps cancel: angles to it sum to zero, signed.
    angle = math.atan2(refined[1].item(), refined[0].item())
    assert sum(target - angle for target in (0.0, 0.3, 2.5)) == pytest.approx(0.0, abs=1e-5)


def test_karcher_max_iter_must_be_whole():
    x, y = t(1.0, 0.0), t(0.0, 1.0)
    assert torch.equal(merge("karcher", [x, y], ["a", "b"], shared={"max_iter": 3.0}),
                       merge("karcher", [x, y], ["a", "b"], shared={"max_iter": 3}))
    with pytest.raises(UserError, match="max_iter must be a whole number"):
        merge("karcher", [x, y], ["a", "b"], shared={"max_iter": 2.5})


def test_karcher_keeps_the_working_dtype():
    x, y = t(1.0, 2.0, dtype=torch.bfloat16), t(2.0, -1.0, dtype=torch.bfloat16)
    assert merge("karcher", [x, y], ["a", "b"]).dtype == torch.bfloat16


# --- recipe checks -------------------------------------------------------------------------

def _codes(recipe: Recipe) -> list[str]:
    return [f.code for f in validate_recipe(recipe, {"a": LLAMA, "b": LLAMA, "c": LLAMA}) if f.is_error]


def _models(method: str, *entries: tuple[str, dict], base: str | None = None, **parameters) -> Recipe:
    models = tuple(ModelEntry(m, Parameters(p)) for m, p in entries)
    return Recipe((Stage(method, models=models, base_model=base, parameters=Parameters(parameters)),))


def test_multislerp_weights_summing_to_zero_are_an_error_unless_not_normalized():
    entries = (("a", {"weight": 0.5}), ("b", {"weight": -0.5}))
    assert "weights-sum-to-zero" in _codes(_models("multislerp", *entries))
    assert "weights-sum-to-zero" not in _codes(_models("multislerp", *entries, normalize_weights=False))


def test_multislerp_base_must_be_a_source_and_not_the_only_one():
    slice_ = Slice((SliceSource("a", (0, 32), Parameters({"weight": 1.0})),
                    SliceSource("b", (0, 32), Parameters({"weight": 1.0}))))
    assert "base-not-in-slice" in _codes(Recipe((Stage("multislerp", slices=(slice_,), base_model="c"),)))
    assert "multislerp-models" in _codes(_models("multislerp", ("a", {}), base="a"))
    assert _codes(_models("multislerp", ("a", {}), ("b", {"weight": 1.0}), base="a")) == []


def test_karcher_max_iter_must_be_whole_at_every_tensor():
    assert "not-a-whole-number" in _codes(_models("karcher", ("a", {}), ("b", {}), max_iter=2.5))
    # [3, 3] reads 3.0000000000000004 at some layers: mergekit refuses it, so do we.
    assert "not-a-whole-number" in _codes(_models("karcher", ("a", {}), ("b", {}), max_iter=(3, 3)))
    assert _codes(_models("karcher", ("a", {}), ("b", {}), max_iter=4, tol=1e-3)) == []
