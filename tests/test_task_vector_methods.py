"""SCE, RAM and RAM+ (tensor-local) on small tensors, against hand-computed values."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.engine.methods import merge_tensors  # noqa: E402

SCE = {"int8_mask": False, "select_topk": 1.0}
RAM = {"epsilon": 1e-5}
RAMPLUS = {"epsilon": 1e-5, "r": 0.1, "alpha": 0.2}


def merge(method, tensors, shared, base="base"):
    models = ["base"] + [f"m{i}" for i in range(1, len(tensors))]
    return merge_tensors(method, tensors, models, base, shared, [{} for _ in tensors], tensor_name="w")


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# --- SCE ---------------------------------------------------------------------------------

def test_sce_of_identical_task_vectors_adds_that_vector():
    base = t(1.0, -2.0, 0.5, 3.0)
    tuned = base + t(0.25, 0.0, -0.75, 1.5)
    assert torch.equal(merge("sce", [base, tuned, tuned.clone()], SCE), tuned)


def test_sce_weighs_by_mean_square_and_erases_deltas_against_the_elected_sign():
    base = t(0.0, 0.0)
    # Mean squares 4 and 1: shares 0.8 and 0.2. Element 0 elects + (sum 1), erasing -1.
    result = merge("sce", [base, t(2.0, 2.0), t(-1.0, 1.0)], SCE)
    assert torch.allclose(result, t(2.0, 2 * 0.8 + 1 * 0.2), atol=1e-6)


@pytest.mark.parametrize("int8_mask", [False, True])
def test_sce_select_topk_keeps_the_elements_varying_most(int8_mask):
    base = torch.zeros(4)
    # Variances across models: 0, 0, 25, 1. Two vary; select_topk 0.5 keeps one of them.
    a, b = t(1.0, 0.0, 5.0, 0.0), t(1.0, 0.0, -5.0, 2.0)
    result = merge("sce", [base, a, b], {"int8_mask": int8_mask, "select_topk": 0.5})
    # Element 2 sums to 0, which elects +: only a's 5 survives. Element 0 agrees but is dropped.
    assert torch.equal(result, t(0.0, 0.0, 5.0, 0.0))


def test_sce_select_topk_zero_keeps_the_base():
    base = t(1.0, 2.0)
    assert torch.equal(merge("sce", [base, t(3.0, 1.0), t(0.0, 4.0)], {**SCE, "select_topk": 0.0}), base)


# --- RAM ---------------------------------------------------------------------------------

def test_ram_keeps_unique_deltas_and_averages_overlapping_ones():
    base = t(1.0, 1.0, 1.0)
    result = merge("ram", [base, base + t(1.0, 0.0, 2.0), base + t(0.0, 0.0, 4.0)], RAM)
    assert torch.equal(result, t(2.0, 1.0, 4.0))


def test_ram_ignores_deltas_within_epsilon():
    base = torch.zeros(3)
    # a's 2 is within epsilon 2.5: b's 4 becomes unique and is kept whole, not halved.
    result = merge("ram", [base, t(1.0, 0.0, 2.0), t(0.0, 0.0, 4.0)], {"epsilon": 2.5})
    assert torch.equal(result, t(0.0, 0.0, 4.0))


def test_ram_needs_the_base():
    with pytest.raises(UserError, match="w: ram needs the base model's tensor"):
        merge("ram", [t(1.0), t(2.0)], RAM, base=None)


# --- RAM+ --------------------------------------------------------------------------------

def test_ramplus_tl_boosts_unique_deltas_by_each_models_overlap_ratio():
    base = torch.zeros(4)
    # a: two unique elements, one shared → ratio 0.5 → boost 1 + 0.2 * 0.5 = 1.1.
    a, b = t(2.0, 0.0, 2.0, 5.0), t(0.0, 0.0, 4.0, 0.0)
    result = merge("ramplus_tl", [base, a, b], {"epsilon": 1e-5, "r": 0.2, "alpha": 1.0})
    boost = torch.tensor(1.1)
    assert torch.equal(result, torch.stack([2 * boost, torch.tensor(0.0), torch.tensor(3.0), 5 * boost]))


def test_ramplus_tl_caps_the_ratio_at_alpha():
    base = torch.zeros(3)
    # a: one unique, two shared → ratio 2, capped at alpha 0.5 → boost 1 + 0.1 * 0.5.
    a, b = t(4.0, 1.0, 1.0), t(0.0, 3.0, 3.0)
    result = merge("ramplus_tl", [base, a, b], {"epsilon": 1e-5, "r": 0.1, "alpha": 0.5})
    assert torch.equal(result, t(4.0, 2.0, 2.0) * torch.tensor([1.05, 1.0, 1.0]))


def test_ramplus_tl_computes_half_precision_in_float32_like_mergekit():
    base = t(1.0, 2.0, 3.0, dtype=torch.bfloat16)
    tuned = t(1.5, 2.0, 2.5, dtype=torch.bfloat16)
    result = merge("ramplus_tl", [base, tuned], RAMPLUS)
    assert result.dtype == torch.float32
    assert torch.equal(merge("ramplus_tl", [base], RAMPLUS), base)
