"""Breadcrumbs and DELLA merges whose output must equal mergekit 0.1.5's bit for bit.

Several models with per-model ``density``, ``gamma`` and ``epsilon`` as gradients and filters,
the ``normalize``, ``rescale``, ``int8_mask`` and ``lambda`` switches, float16, bfloat16 and
float32 working dtypes, and seeded DELLA runs (also over offset slices with per-slice bases
and a union vocabulary, whose tensor order decides which masks each tensor draws). Every
mergekit merge runs in one subprocess.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.synthetic import DonorShape  # noqa: E402
from model_folder import folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

# Rows of 320 entries: DELLA's bfloat16 ranks above 256 round, as mergekit's do.
SHAPE = DonorShape(num_layers=4, hidden_size=64, intermediate_size=320, vocab_size=96)
SEED = 11

DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 1}),
    "B": (SHAPE, {"seed": 2}),
    "C": (SHAPE, {"seed": 3}),
    "D": (SHAPE, {"seed": 4}),
    "BA": (SHAPE, {"seed": 5, "dtype": "bfloat16"}),
    "BB": (SHAPE, {"seed": 6, "dtype": "bfloat16"}),
    "BC": (SHAPE, {"seed": 7, "dtype": "bfloat16"}),
    "V98": (DonorShape(**{**SHAPE.__dict__, "vocab_size": 98}), {"seed": 8, "added_tokens": 2}),
}

RECIPES: dict[str, str] = {
    "breadcrumbs_gradients_and_filters": """
        models:
          - {model: "{B}", parameters: {weight: 0.6, density: [0.3, 0.9],
                                        gamma: [{filter: mlp, value: 0.05}, {value: 0.02}]}}
          - {model: "{C}", parameters: {weight: [0.2, 0.8], density: 0.7, gamma: 0.1}}
          - {model: "{D}", parameters: {weight: 0.5, density: 0.5}}
        merge_method: breadcrumbs
        base_model: "{A}"
        parameters: {lambda: 0.8}
    """,
    # Density + gamma above 1: fewer outliers are dropped; density 0 keeps nothing.
    "breadcrumbs_switches": """
        models:
          - {model: "{B}", parameters: {weight: 0.7, density: 0.95, gamma: 0.2}}
          - {model: "{C}", parameters: {weight: 0.4, density: [{filter: self_attn, value: 0}, {value: 0.4}],
                                        gamma: 0}}
        merge_method: breadcrumbs
        base_model: "{A}"
        parameters: {normalize: true, rescale: true, int8_mask: true}
        dtype: float32
    """,
    "breadcrumbs_ties_gradients_and_filters": """
        models:
          - {model: "{A}"}
          - {model: "{B}", parameters: {weight: 0.6, density: [0.2, 0.8], gamma: [0.0, 0.2]}}
          - {model: "{C}", parameters: {weight: 0.3, density: 0.6,
                                        gamma: [{filter: self_attn, value: 0.3}, {value: 0.05}]}}
          - {model: "{D}", parameters: {weight: 0.5, density: 0.5}}
        merge_method: breadcrumbs_ties
        base_model: "{A}"
        parameters: {int8_mask: true, lambda: 1.3}
    """,
    "breadcrumbs_ties_bf16": """
        models:
          - {model: "{BB}", parameters: {weight: 0.5, density: 0.6, gamma: 0.03}}
          - {model: "{BC}", parameters: {weight: 0.5, density: [0.4, 0.7]}}
        merge_method: breadcrumbs_ties
        base_model: "{BA}"
        parameters: {normalize: true, rescale: true}
        dtype: bfloat16
    """,
    "breadcrumbs_bf16_as_float32": """
        models:
          - {model: "{BB}", parameters: {weight: 0.5, density: 0.6, gamma: 0.03}}
          - {model: "{BC}", parameters: {weight: 0.7, density: 0.8, gamma: 0.1}}
        merge_method: breadcrumbs
        base_model: "{BA}"
        parameters: {rescale: true}
        dtype: float32
    """,
    "della_gradients_and_filters": """
        models:
          - {model: "{B}", parameters: {weight: 0.6, density: [0.3, 0.7],
                                        epsilon: [{filter: mlp, value: 0.1}, {value: 0.2}]}}
          - {model: "{C}", parameters: {weight: [0.2, 0.8], density: 0.5}}
          - {model: "{D}", parameters: {weight: 0.4, density: 0.6, epsilon: 0}}
        merge_method: della
        base_model: "{A}"
    """,
    "della_switches": """
        models:
          - {model: "{B}", parameters: {weight: 0.6, density: 0.5, epsilon: 0.3}}
          - {model: "{C}", parameters: {weight: 0.9, density: [{filter: self_attn, value: 1}, {value: 0.7}]}}
        merge_method: della
        base_model: "{A}"
        parameters: {normalize: false, rescale: false, int8_mask: true, lambda: 0.5}
    """,
    "della_bf16": """
        models:
          - {model: "{BB}", parameters: {weight: 0.5, density: 0.5, epsilon: 0.2}}
          - {model: "{BC}", parameters: {weight: 0.5, density: [0.3, 0.7]}}
        merge_method: della
        base_model: "{BA}"
        dtype: bfloat16
    """,
    "della_linear_gradients_and_filters": """
        models:
          - {model: "{A}"}
          - {model: "{B}", parameters: {weight: 0.5, density: [0.4, 0.6], epsilon: [0.05, 0.3]}}
          - {model: "{C}", parameters: {weight: 0.3, density: [{filter: mlp, value: 1}, {value: 0.5}]}}
          - {model: "{D}", parameters: {weight: 0.2, density: 0.3, epsilon: 0.1}}
        merge_method: della_linear
        base_model: "{A}"
        parameters: {lambda: 1.5}
    """,
    "della_linear_switches_float32": """
        models:
          - {model: "{B}", parameters: {weight: 0.5, density: 0.5}}
          - {model: "{C}", parameters: {weight: 0.5, density: 0.4, epsilon: 0.35}}
        merge_method: della_linear
        base_model: "{A}"
        parameters: {normalize: true, rescale: false}
        dtype: float32
    """,
    "della_linear_bf16_as_float16": """
        models:
          - {model: "{BB}", parameters: {weight: 0.6, density: 0.5}}
          - {model: "{BC}", parameters: {weight: 0.4, density: 0.5}}
        merge_method: della_linear
        base_model: "{BA}"
        dtype: float16
    """,
    # Offset slices: tensors merge in the order of their greatest input name (layers 2, 3, 0, 1
    # here). Where two output tensors share that name, mergekit's order is its task graph's.
    "della_slice_bases": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 2]}
              - {model: "{B}", layer_range: [2, 4], parameters: {density: 0.4}}
            base_model: "{A}"
          - sources:
              - {model: "{C}", layer_range: [0, 2]}
              - {model: "{D}", layer_range: [0, 2], parameters: {density: 0.6}}
            base_model: "{C}"
        merge_method: della
        parameters: {weight: 0.7, epsilon: 0.2}
    """,
    "della_union_vocabulary": """
        models:
          - {model: "{B}", parameters: {weight: 0.5, density: 0.5}}
          - {model: "{V98}", parameters: {weight: 0.5, density: 0.6}}
        merge_method: della_linear
        base_model: "{A}"
        tokenizer_source: union
    """,
    # Rebuilt vocabulary tensors draw their masks in mergekit's order too (lm_head first).
    "dare_base_vocabulary": """
        models:
          - {model: "{V98}", parameters: {weight: 0.6, density: 0.5}}
          - {model: "{B}", parameters: {weight: 0.4, density: 0.7}}
        merge_method: dare_ties
        base_model: "{A}"
        tokenizer_source: base
    """,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity_sparsify"), DONORS, RECIPES, SEED)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name))


@pytest.mark.parametrize("name", ["della_gradients_and_filters", "della_linear_gradients_and_filters"])
def test_della_masks_follow_the_seed(workspace, name):
    """Another seed draws other masks: the equality above is not that of a deterministic merge."""
    a = folder_weights(run_ours(workspace, name, seed=SEED + 1).folder)
    b = folder_weights(workspace.mergekit_folder(name))
    assert not torch.equal(a["model.layers.0.mlp.down_proj.weight"], b["model.layers.0.mlp.down_proj.weight"])
