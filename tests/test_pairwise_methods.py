"""NearSwap and Arcee Fusion on small tensors, against hand-computed values."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.engine.draw_order import RANDOMIZED_METHODS  # noqa: E402
from merger_gui.engine.methods import merge_tensors  # noqa: E402
from merger_gui.engine.pairwise_methods import FUSION_QUANTILE_SAMPLE_SIZE  # noqa: E402


def merge(method, tensors, models, base=None, shared=None, **kwargs):
    per_model = [{} for _ in tensors]
    return merge_tensors(method, tensors, models, base, shared or {}, per_model, tensor_name="w", **kwargs)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def _random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- NearSwap ------------------------------------------------------------------------------

def test_nearswap_moves_each_entry_by_t_over_its_distance():
    base, other = t(0.0, 0.0, 0.0, 1.0), t(0.005, 0.02, -0.04, 1.0)
    # weights min(1, 0.01 / |diff|): 1 (swapped), 0.5, 0.25, and 1 where they agree.
    result = merge("nearswap", [other, base], ["b", "a"], "a", {"t": 0.01})
    assert torch.allclose(result, t(0.005, 0.01, -0.01, 1.0), atol=1e-8)


def test_nearswap_t0_returns_the_base_where_the_models_differ():
    base, other = _random(8, 8, seed=0), _random(8, 8, seed=1)
    assert torch.equal(merge("nearswap", [base, other], ["a", "b"], "a", {"t": 0.0}), base)


def test_nearswap_copies_a_lone_base_and_refuses_a_lone_other_model():
    x = t(1.0, 2.0)
    assert merge("nearswap", [x], ["a"], "a", {"t": 0.1}) is x
    with pytest.raises(UserError, match="w: nearswap needs the base model's tensor"):
        merge("nearswap", [x], ["b"], "a", {"t": 0.1})


def test_nearswap_needs_t_and_exactly_two_models():
    with pytest.raises(UserError, match="'t' is not set"):
        merge("nearswap", [t(1.0), t(2.0)], ["a", "b"], "a")
    with pytest.raises(UserError, match="exactly one other model, got 3"):
        merge("nearswap", [t(1.0), t(2.0), t(3.0)], ["a", "b", "c"], "a", {"t": 0.1})


# --- Arcee Fusion --------------------------------------------------------------------------

def test_arcee_fusion_of_identical_models_is_the_base():
    base = _random(16, 32, seed=2).half()
    result = merge("arcee_fusion", [base, base.clone()], ["a", "b"], "a")
    # mergekit's float32 mask makes the result float32.
    assert result.dtype == torch.float32
    assert torch.equal(result, base.float())


def test_arcee_fusion_takes_only_the_outlying_changes():
    base = _random(16, 32, seed=3)
    other = base + 0.001 * _random(16, 32, seed=4)
    other[5, 7] += 4.0
    result = merge("arcee_fusion", [other, base], ["b", "a"], "a")
    assert result[5, 7] == other[5, 7]
    kept = (result == base).float().mean()
    assert 0.5 < kept < 1


def test_arcee_fusion_copies_a_lone_tensor_of_either_model():
    x = t(1.0, 2.0)
    assert merge("arcee_fusion", [x], ["b"], "a") is x


def test_arcee_fusion_samples_large_tensors_from_the_generator():
    assert "arcee_fusion" in RANDOMIZED_METHODS
    rows = FUSION_QUANTILE_SAMPLE_SIZE // 1000 + 1
    base, other = _random(rows, 1000, seed=5), _random(rows, 1000, seed=6)

    def fuse(seed: int, tensors=(base, other)) -> tuple[torch.Tensor, bool]:
        generator = torch.Generator().manual_seed(seed)
        before = generator.get_state()
        result = merge("arcee_fusion", list(tensors), ["a", "b"], "a", generator=generator)
        return result, not torch.equal(before, generator.get_state())

    first, drew = fuse(0)
    again, _ = fuse(0)
    assert drew and torch.equal(first, again)
    assert not torch.equal(first, fuse(1)[0])
    _, small_drew = fuse(0, (base[:10], other[:10]))
    assert not small_drew
