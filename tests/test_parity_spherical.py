"""Multi-SLERP and Karcher merges whose output must equal mergekit 0.1.5's bit for bit.

Whole merges (every recipe runs through mergekit in one subprocess) cover two and three
models, with and without a base, ``normalize_weights: false``, weight gradients and filters,
``eps``, ``max_iter``/``tol`` (also per tensor), float16 and bfloat16 donors with and without
``dtype``, and tensors of zero norm. The kernel tests call mergekit's method objects directly
on tensors a recipe cannot produce: a lone input, antipodal pairs, large tensors whose
reductions run in parallel chunks.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from mergekit.merge_methods.base import TensorGroup  # noqa: E402
from mergekit.merge_methods.karcher import karcher_merge_method  # noqa: E402
from mergekit.merge_methods.multislerp import multislerp as multislerp_merge_method  # noqa: E402
from model_folder import folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.core.synthetic import DonorShape  # noqa: E402
from merger_gui.engine.methods import merge_tensors  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=96)
ZEROED = "model.layers.1.mlp.down_proj.weight"  # (64, 128), all zeros in Z and Z2
ALSO_ZEROED = "model.layers.2.self_attn.o_proj.weight"  # (64, 64), all zeros in Z2


def _zeros(*names: str) -> dict[str, np.ndarray]:
    shapes = {ZEROED: (64, 128), ALSO_ZEROED: (64, 64)}
    return {name: np.zeros(shapes[name], dtype=np.float32) for name in names}


DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 101}),
    "B": (SHAPE, {"seed": 102}),
    "C": (SHAPE, {"seed": 103}),
    "D": (SHAPE, {"seed": 104}),
    "BF": (SHAPE, {"seed": 111, "dtype": "bfloat16"}),
    "BF2": (SHAPE, {"seed": 112, "dtype": "bfloat16"}),
    "BF3": (SHAPE, {"seed": 113, "dtype": "bfloat16"}),
    "Z": (SHAPE, {"seed": 121, "extra_tensors": _zeros(ZEROED)}),
    "Z2": (SHAPE, {"seed": 122, "extra_tensors": _zeros(ZEROED, ALSO_ZEROED)}),
}

RECIPES: dict[str, str] = {
    "multislerp_two_no_base": """
        models:
          - {model: "{A}", parameters: {weight: 0.3}}
          - {model: "{B}", parameters: {weight: 0.7}}
        merge_method: multislerp
    """,
    "multislerp_two_with_base": """
        models:
          - {model: "{B}", parameters: {weight: 1.0}}
          - {model: "{C}", parameters: {weight: 2.0}}
        merge_method: multislerp
        base_model: "{A}"
    """,
    "multislerp_three_no_base": """
        models:
          - {model: "{A}", parameters: {weight: 0.2}}
          - {model: "{B}", parameters: {weight: 0.5}}
          - {model: "{C}", parameters: {weight: 0.3}}
        merge_method: multislerp
    """,
    "multislerp_three_base_listed": """
        models:
          - {model: "{A}"}
          - {model: "{B}", parameters: {weight: 0.5}}
          - {model: "{C}", parameters: {weight: 0.25}}
          - {model: "{D}", parameters: {weight: 0.25}}
        merge_method: multislerp
        base_model: "{A}"
    """,
    "multislerp_normalize_weights_false": """
        models:
          - {model: "{A}", parameters: {weight: 0.6}}
          - {model: "{B}", parameters: {weight: 0.9}}
          - {model: "{C}", parameters: {weight: -0.2}}
        merge_method: multislerp
        parameters: {normalize_weights: false, eps: 1e-6}
    """,
    "multislerp_gradients_and_filters": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{B}", layer_range: [0, 6], parameters: {weight: [0.1, 0.5, 0.9]}}
              - {model: "{C}", layer_range: [0, 6],
                 parameters: {weight: [{filter: mlp, value: [1.0, 0.2]}, {value: 0.4}]}}
            base_model: "{A}"
        merge_method: multislerp
        parameters: {normalize_weights: [{filter: self_attn, value: false}, {value: true}]}
    """,
    "multislerp_zero_tensors": """
        models:
          - {model: "{Z}", parameters: {weight: 0.5}}
          - {model: "{Z2}", parameters: {weight: 0.5}}
          - {model: "{A}", parameters: {weight: 0.5}}
        merge_method: multislerp
        dtype: float32
    """,
    # In float16, eps = 1e-8 rounds to 0: a zero tensor's direction is 0 / 0, and both write NaN.
    "multislerp_zero_tensor_float16_nan": """
        models:
          - {model: "{Z}", parameters: {weight: 0.5}}
          - {model: "{A}", parameters: {weight: 0.5}}
        merge_method: multislerp
    """,
    "multislerp_bf16": """
        models:
          - {model: "{BF2}", parameters: {weight: 0.4}}
          - {model: "{BF3}", parameters: {weight: 0.6}}
        merge_method: multislerp
        base_model: "{BF}"
        dtype: bfloat16
    """,
    "multislerp_bf16_in_float32": """
        models:
          - {model: "{BF}", parameters: {weight: 0.4}}
          - {model: "{BF2}", parameters: {weight: 0.6}}
        merge_method: multislerp
        dtype: float32
        out_dtype: bfloat16
    """,
    "karcher_two": """
        models:
          - {model: "{A}"}
          - {model: "{B}"}
        merge_method: karcher
    """,
    # Karcher ignores the base's role: the base, added to the models, is one more input.
    "karcher_three_base_added": """
        models:
          - {model: "{B}"}
          - {model: "{C}"}
        merge_method: karcher
        base_model: "{A}"
    """,
    "karcher_max_iter_tol": """
        models:
          - {model: "{A}"}
          - {model: "{B}"}
          - {model: "{C}"}
        merge_method: karcher
        parameters: {max_iter: 1, tol: 1e-7}
    """,
    # mergekit's YAML reads 5e-2 as text, which becomes the number 0.05.
    "karcher_loose_tol": """
        models:
          - {model: "{A}"}
          - {model: "{B}"}
          - {model: "{C}"}
        merge_method: karcher
        parameters: {tol: 5e-2}
    """,
    "karcher_per_tensor_max_iter": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{B}", layer_range: [0, 6]}
              - {model: "{C}", layer_range: [0, 6]}
        merge_method: karcher
        parameters:
          max_iter: [{filter: mlp, value: 1}, {filter: self_attn, value: 40}, {value: 3}]
          tol: 1.0e-9
    """,
    "karcher_zero_tensors": """
        models:
          - {model: "{Z}"}
          - {model: "{Z2}"}
          - {model: "{A}"}
        merge_method: karcher
    """,
    "karcher_all_zero_tensor": """
        models:
          - {model: "{Z}"}
          - {model: "{Z2}"}
        merge_method: karcher
    """,
    "karcher_bf16_dtype": """
        models:
          - {model: "{BF}"}
          - {model: "{BF2}"}
          - {model: "{BF3}"}
        merge_method: karcher
        dtype: bfloat16
    """,
    "karcher_bf16_in_float32": """
        models:
          - {model: "{BF}"}
          - {model: "{BF2}"}
        merge_method: karcher
        dtype: float32
    """,
    "karcher_mixed_dtypes": """
        models:
          - {model: "{A}"}
          - {model: "{BF}"}
        merge_method: karcher
    """,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity_spherical"), DONORS, RECIPES, seed=0)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name))


def test_zeroed_tensors_exercise_the_zero_norm_paths(workspace):
    """The recipes above reach Karcher's zero-norm branches (else the parity proves less)."""
    merged = folder_weights(workspace.mergekit_folder("karcher_all_zero_tensor"))
    assert not merged[ZEROED].any()
    assert merged[ALSO_ZEROED].any()
    partly = folder_weights(workspace.mergekit_folder("karcher_zero_tensors"))[ZEROED]
    assert partly.any()
    assert folder_weights(workspace.mergekit_folder("multislerp_zero_tensor_float16_nan"))[ZEROED].isnan().all()
    assert not folder_weights(workspace.mergekit_folder("multislerp_zero_tensors"))[ZEROED].isnan().any()


# --- kernels on tensors no recipe produces ---------------------------------------------------

def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Bit for bit equal, NaN where mergekit has NaN."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


def _theirs(method, tensors: list[torch.Tensor], base_index: int | None, parameters: dict) -> torch.Tensor:
    group = TensorGroup.from_tensors(tensors, base_index=base_index)
    (result,) = method((group,), parameters=parameters)
    return result


def _ours(method: str, tensors: list[torch.Tensor], base_index: int | None, shared: dict,
          weights: list[float] | None = None) -> torch.Tensor:
    models = [f"m{i}" for i in range(len(tensors))]
    per_model = [{} for _ in tensors]
    others = [i for i in range(len(tensors)) if i != base_index]
    for i, w in zip(others, weights or ()):
        per_model[i] = {"weight": w}
    base = None if base_index is None else models[base_index]
    return merge_tensors(method, tensors, models, base, shared, per_model, tensor_name="w")


def _donor_like(count: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(shape, generator=generator)
    return [(common + 0.5 * torch.randn(shape, generator=generator)).to(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("base_index", [None, 1])
def test_multislerp_kernel_equals_mergekit_on_large_tensors(dtype, base_index):
    tensors = _donor_like(4, (300, 257), dtype, seed=5)
    weights = [0.5, 0.2, 0.3] if base_index is not None else [0.5, 0.2, 0.3, 0.4]
    for normalize in (True, False):
        theirs = _theirs(multislerp_merge_method, tensors, base_index,
                         {"weight": weights, "normalize_weights": normalize})
        ours = _ours("multislerp", tensors, base_index, {"normalize_weights": normalize}, weights)
        _assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_karcher_kernel_equals_mergekit_on_large_tensors(dtype):
    tensors = _donor_like(3, (300, 257), dtype, seed=6)
    for max_iter, tol in ((10, 1e-5), (0, 1e-5), (3, 1e-2), (30, 1e-12)):
        theirs = _theirs(karcher_merge_method, tensors, None, {"max_iter": max_iter, "tol": tol})
        _assert_same(_ours("karcher", tensors, None, {"max_iter": max_iter, "tol": tol}), theirs)


def test_a_lone_input_is_returned_as_mergekit_does():
    x = torch.randn(5, 3, dtype=torch.bfloat16)
    base = torch.randn(5, 3, dtype=torch.bfloat16)
    _assert_same(_ours("karcher", [x], None, {}), _theirs(karcher_merge_method, [x], None, {}))
    _assert_same(_ours("multislerp", [x], None, {}, [0.3]),
                 _theirs(multislerp_merge_method, [x], None, {"weight": [0.3]}))
    # With a base and one other model, multislerp returns that model's tensor untouched.
    _assert_same(_ours("multislerp", [base, x], 0, {}, [0.3]),
                 _theirs(multislerp_merge_method, [base, x], 0, {"weight": [0.3]}))


def test_degenerate_inputs_match_mergekit():
    a = torch.randn(40)
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        # Two antipodal directions with equal weights fall back to the weighted sum.
        _assert_same(_ours("multislerp", [x, -x], None, {}, [1.0, 1.0]),
                     _theirs(multislerp_merge_method, [x, -x], None, {"weight": [1.0, 1.0]}))
        _assert_same(_ours("karcher", [x, -x], None, {}), _theirs(karcher_merge_method, [x, -x], None, {}))
        zero = torch.zeros_like(x)
        _assert_same(_ours("karcher", [zero, x, 2 * x], None, {}),
                     _theirs(karcher_merge_method, [zero, x, 2 * x], None, {}))
    with pytest.raises(ValueError, match="weighted sum of the input tensors is zero"):
        _theirs(multislerp_merge_method, [a, -a, 0 * a], None, {"weight": [1.0, 1.0, 1.0]})
    with pytest.raises(UserError, match="cancel out"):
        _ours("multislerp", [a, -a, 0 * a], None, {}, [1.0, 1.0, 1.0])
