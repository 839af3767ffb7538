"""NearSwap and Arcee Fusion outputs must equal mergekit 0.1.5's, bit for bit.

NearSwap with a scalar and a gradient ``t``, over half-precision donors, with ``dtype``
and with the base listed second; Arcee Fusion on small tensors and on embeddings over
its quantile sample size, where mergekit samples with the global generator seeded by
``random_seed`` and we with a generator seeded alike. Every mergekit merge runs in one
subprocess.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.synthetic import DonorShape  # noqa: E402
from merger_gui.engine.pairwise_methods import FUSION_QUANTILE_SAMPLE_SIZE  # noqa: E402
from model_folder import folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SEED = 7
SMALL = DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=96)
# Embeddings and head of 16384 × 64 = 1,048,576 elements: over the quantile sample size.
LARGE = DonorShape(num_layers=2, hidden_size=64, intermediate_size=128, vocab_size=16384)
DONORS: dict[str, DonorSpec] = {
    "A": (SMALL, {"seed": 1}),
    "B": (SMALL, {"seed": 2}),
    "FA": (SMALL, {"seed": 3, "dtype": "float32"}),
    "FB": (SMALL, {"seed": 4, "dtype": "float32"}),
    "BF": (SMALL, {"seed": 5, "dtype": "bfloat16"}),
    "BF2": (SMALL, {"seed": 6, "dtype": "bfloat16"}),
    "LA": (LARGE, {"seed": 8, "dtype": "float32"}),
    "LB": (LARGE, {"seed": 9, "dtype": "float32"}),
    "LHA": (LARGE, {"seed": 10}),
    "LHB": (LARGE, {"seed": 11}),
}

RECIPES: dict[str, str] = {
    "nearswap_scalar_t": """
        models:
          - {model: "{B}"}
        merge_method: nearswap
        base_model: "{A}"
        parameters: {t: 0.01}
    """,
    "nearswap_gradient_t": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 4]}
              - {model: "{B}", layer_range: [0, 4]}
        merge_method: nearswap
        base_model: "{A}"
        parameters:
          t: [{filter: mlp, value: [0.05, 0.0001]}, {value: [0.0001, 0.01, 0.03]}]
    """,
    # The base second, t = 0 (the base) and 1 (the other model almost everywhere).
    "nearswap_base_second_extremes": """
        slices:
          - sources:
              - {model: "{B}", layer_range: [0, 2]}
              - {model: "{A}", layer_range: [0, 2]}
            parameters: {t: 0}
          - sources:
              - {model: "{B}", layer_range: [2, 4]}
              - {model: "{A}", layer_range: [2, 4]}
            parameters: {t: 1}
        merge_method: nearswap
        base_model: "{A}"
    """,
    "nearswap_bf16_dtype": """
        models:
          - {model: "{BF2}"}
        merge_method: nearswap
        base_model: "{BF}"
        parameters: {t: [0.001, 0.02]}
        dtype: bfloat16
    """,
    "nearswap_bf16_as_float32": """
        models:
          - {model: "{BF2}"}
        merge_method: nearswap
        base_model: "{BF}"
        parameters: {t: 0.005}
        dtype: float32
        out_dtype: bfloat16
    """,
    "arcee_fusion_float32": """
        models:
          - {model: "{FB}"}
        merge_method: arcee_fusion
        base_model: "{FA}"
    """,
    "arcee_fusion_bf16_dtype": """
        models:
          - {model: "{BF2}"}
        merge_method: arcee_fusion
        base_model: "{BF}"
        dtype: bfloat16
        out_dtype: bfloat16
    """,
    "arcee_fusion_float16_out_dtype": """
        models:
          - {model: "{B}"}
        merge_method: arcee_fusion
        base_model: "{A}"
        out_dtype: float16
    """,
    "arcee_fusion_large_seeded": """
        models:
          - {model: "{LB}"}
        merge_method: arcee_fusion
        base_model: "{LA}"
    """,
    "arcee_fusion_large_float16_seeded": """
        models:
          - {model: "{LHB}"}
        merge_method: arcee_fusion
        base_model: "{LHA}"
        out_dtype: float16
    """,
    # mergekit's mask is float32, so half-precision inputs merge to float32 tensors.
    "arcee_fusion_float16_default_dtype": """
        models:
          - {model: "{B}"}
        merge_method: arcee_fusion
        base_model: "{A}"
    """,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity_pairwise"), DONORS, RECIPES, SEED)


# Compared bit for bit, NaNs included: mergekit's NearSwap gives NaN in half precision at
# t = 0 where the donors agree (0 · 1/1e-6, and 1/1e-6 overflows float16).
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name))


def test_nearswap_merges_partially(workspace):
    """The recipes exercise the interpolation, not only copies of either donor."""
    merged = folder_weights(workspace.mergekit_folder("nearswap_scalar_t"))["model.layers.0.mlp.up_proj.weight"]
    a, b = (folder_weights(workspace.donors[m])["model.layers.0.mlp.up_proj.weight"] for m in ("A", "B"))
    assert ((merged != a) & (merged != b)).any()
    assert (merged == b).any()


def test_large_fusion_depends_on_the_seed(workspace):
    """The large tensors' masks come from the sample, so only the same seed matches mergekit."""
    name = "arcee_fusion_large_seeded"
    theirs = folder_weights(workspace.mergekit_folder(name))
    ours = folder_weights(run_ours(workspace, name, seed=SEED + 1).folder)
    large = [n for n, t in theirs.items() if t.numel() > FUSION_QUANTILE_SAMPLE_SIZE]
    assert sorted(large) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert any(not torch.equal(ours[n], theirs[n]) for n in large)
