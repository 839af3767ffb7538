"""More recipe forms, donor families and dtypes whose output must equal mergekit 0.1.5's.

Complements test_parity_mergekit.py: the ``models:`` form with and without a listed base,
per-slice bases, layer-index filters, switches (``normalize``, ``int8_mask``, ``rescale``,
``filter_wise``, nuslerp's), passthrough scales of 0 and below, slerp over offset sources,
one-layer slices and ``t`` of exactly 0 and 1, Qwen2 biases, Gemma's tied embeddings,
``inv_freq`` buffers, sharded and ``.bin`` donors, mixed dtypes without ``dtype`` and token
overrides. Every mergekit merge runs in one subprocess.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.synthetic import DonorShape  # noqa: E402
from model_folder import folder_config, folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=6, hidden_size=64, intermediate_size=128, vocab_size=96)
SEED = 7


def _shape(**changes) -> DonorShape:
    return DonorShape(**{**SHAPE.__dict__, **changes})


INV_FREQ = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": (1.0 / 10000 ** (np.arange(0, 16, 2) / 16))
            .astype(np.float32) for i in range(6)}
# name → (shape, write_donor keyword arguments)
DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 1}),
    "B": (SHAPE, {"seed": 2}),
    "C": (SHAPE, {"seed": 3}),
    "QA": (_shape(family="qwen2"), {"seed": 11}),
    "QB": (_shape(family="qwen2"), {"seed": 12}),
    "QC": (_shape(family="qwen2"), {"seed": 13}),
    "GA": (_shape(family="gemma", tie_word_embeddings=True), {"seed": 21}),
    "GB": (_shape(family="gemma", tie_word_embeddings=True), {"seed": 22}),
    "MA": (_shape(family="mistral"), {"seed": 31}),
    "MB": (_shape(family="mistral"), {"seed": 32}),
    "LA": (SHAPE, {"seed": 41, "extra_tensors": INV_FREQ}),
    "LB": (SHAPE, {"seed": 42, "extra_tensors": INV_FREQ}),
    "SH": (SHAPE, {"seed": 51, "shards": 3}),
    "BN": (SHAPE, {"seed": 52, "weight_format": "bin"}),
    "F32": (SHAPE, {"seed": 53, "dtype": "float32"}),
    "BF": (SHAPE, {"seed": 54, "dtype": "bfloat16"}),
    "BF2": (SHAPE, {"seed": 55, "dtype": "bfloat16"}),
    "V98": (_shape(vocab_size=98), {"seed": 56, "added_tokens": 2}),
    "TL": (_shape(tie_word_embeddings=True), {"seed": 58}),
}

RECIPES: dict[str, str] = {
    "linear_models_no_base": """
        models:
          - {model: "{A}", parameters: {weight: 0.3}}
          - {model: "{B}", parameters: {weight: [0.1, 0.9]}}
        merge_method: linear
    """,
    "linear_normalize_false_f32": """
        models:
          - {model: "{A}", parameters: {weight: 0.3}}
          - {model: "{B}", parameters: {weight: 0.5}}
        merge_method: linear
        parameters: {normalize: false}
        dtype: float32
    """,
    "linear_scopes": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6], parameters: {weight: [{filter: mlp, value: 0.9}]}}
              - {model: "{B}", layer_range: [0, 6]}
            parameters: {weight: [{filter: self_attn, value: 0.2}, {value: 0.6}]}
        merge_method: linear
        parameters: {weight: 5, normalize: true}
    """,
    "task_arithmetic_base_listed": """
        models:
          - {model: "{A}"}
          - {model: "{B}", parameters: {weight: 0.6}}
          - {model: "{C}", parameters: {weight: [0.2, 0.8]}}
        merge_method: task_arithmetic
        base_model: "{A}"
        parameters: {lambda: 0.7, normalize: true}
    """,
    "task_arithmetic_slice_bases": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 3]}
              - {model: "{B}", layer_range: [0, 3]}
            base_model: "{B}"
            parameters: {weight: 0.5}
          - sources:
              - {model: "{A}", layer_range: [3, 6]}
              - {model: "{C}", layer_range: [3, 6]}
            base_model: "{C}"
            parameters: {weight: 0.5}
        merge_method: task_arithmetic
    """,
    # Per-model filters match input names (layer 2 of B), shared ones output names.
    "layer_index_filters": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 3]}
              - {model: "{B}", layer_range: [2, 5],
                 parameters: {weight: [{filter: "layers.2.", value: 2.0}, {value: 0.5}]}}
        merge_method: task_arithmetic
        base_model: "{A}"
        parameters: {lambda: [{filter: "layers.2.", value: 0.1}, {filter: "*", value: 1.0}]}
    """,
    "empty_rule_list_falls_through": """
        models:
          - {model: "{B}", parameters: {weight: []}}
          - {model: "{C}", parameters: {weight: 0.5}}
        merge_method: task_arithmetic
        base_model: "{A}"
        parameters: {weight: 0.25}
    """,
    "ties_switches": """
        models:
          - {model: "{B}", parameters: {weight: 0.6, density: [0.3, 0.9]}}
          - {model: "{C}", parameters: {weight: 0.4, density: 0.7}}
        merge_method: ties
        base_model: "{A}"
        parameters: {int8_mask: true, normalize: false, rescale: true}
    """,
    "dare_linear_base_listed": """
        models:
          - {model: "{A}"}
          - {model: "{B}", parameters: {weight: 0.7, density: 0.3}}
          - {model: "{C}", parameters: {weight: 0.7, density: 0.9}}
        merge_method: dare_linear
        base_model: "{A}"
        parameters: {normalize: true, rescale: false}
    """,
    "model_stock_filter_wise": """
        models:
          - {model: "{B}"}
          - {model: "{C}"}
        merge_method: model_stock
        base_model: "{A}"
        parameters: {filter_wise: true}
    """,
    "model_stock_base_in_middle": """
        models:
          - {model: "{B}"}
          - {model: "{A}"}
          - {model: "{C}"}
        merge_method: model_stock
        base_model: "{A}"
    """,
    "nuslerp_no_base": """
        models:
          - {model: "{B}", parameters: {weight: 0.3}}
          - {model: "{C}", parameters: {weight: 0.7}}
        merge_method: nuslerp
    """,
    "nuslerp_row_wise": """
        models:
          - {model: "{B}", parameters: {weight: 0.3}}
          - {model: "{C}", parameters: {weight: 0.7}}
        merge_method: nuslerp
        base_model: "{A}"
        parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}
    """,
    "passthrough_scale_zero_negative": """
        slices:
          - sources: [{model: "{A}", layer_range: [0, 2], parameters: {scale: 0}}]
          - sources: [{model: "{B}", layer_range: [2, 4], parameters: {scale: -1.5}}]
          - sources: [{model: "{A}", layer_range: [4, 5]}]
        merge_method: passthrough
    """,
    "passthrough_repeated_layers": """
        slices:
          - sources: [{model: "{A}", layer_range: [0, 4]}]
          - sources: [{model: "{A}", layer_range: [2, 6]}]
          - sources: [{model: "{A}", layer_range: [3, 4]}]
        merge_method: passthrough
    """,
    "slerp_offset_sources": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 4]}
              - {model: "{B}", layer_range: [2, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters:
          t: [{filter: "layers.1.", value: 0.9}, {value: [0, 1]}]
    """,
    "slerp_t_0_and_1": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 3]}
              - {model: "{B}", layer_range: [0, 3]}
            parameters: {t: 0}
          - sources:
              - {model: "{A}", layer_range: [3, 6]}
              - {model: "{B}", layer_range: [3, 6]}
            parameters: {t: 1}
        merge_method: slerp
        base_model: "{B}"
    """,
    "slerp_one_layer_slice": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 1]}
              - {model: "{B}", layer_range: [0, 1]}
          - sources:
              - {model: "{A}", layer_range: [1, 6]}
              - {model: "{B}", layer_range: [1, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: [0.1, 0.9]}
    """,
    "task_arithmetic_only_base": """
        models:
          - {model: "{A}"}
        merge_method: task_arithmetic
        base_model: "{A}"
    """,
    "qwen2_ties": """
        models:
          - {model: "{QB}", parameters: {weight: 0.5, density: 0.5}}
          - {model: "{QC}", parameters: {weight: 0.5, density: 0.5}}
        merge_method: ties
        base_model: "{QA}"
    """,
    "gemma_passthrough": """
        slices:
          - sources: [{model: "{GA}", layer_range: [0, 4]}]
          - sources: [{model: "{GB}", layer_range: [2, 6]}]
        merge_method: passthrough
    """,
    "mistral_linear": """
        models:
          - {model: "{MA}", parameters: {weight: 1}}
          - {model: "{MB}", parameters: {weight: 2}}
        merge_method: linear
        base_model: "{MA}"
    """,
    "inv_freq_slerp": """
        slices:
          - sources:
              - {model: "{LA}", layer_range: [0, 6]}
              - {model: "{LB}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{LA}"
        parameters: {t: 0.5}
    """,
    "sharded_with_bin": """
        slices:
          - sources:
              - {model: "{SH}", layer_range: [0, 6]}
              - {model: "{BN}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{SH}"
        parameters: {t: 0.4}
    """,
    # Without dtype, mixed inputs merge and are stored in their promoted dtype (f16 + bf16 → f32).
    "mixed_dtypes_slerp": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{BF}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.4}
    """,
    "mixed_dtypes_linear": """
        models:
          - {model: "{BF}", parameters: {weight: 1}}
          - {model: "{F32}", parameters: {weight: 1}}
          - {model: "{A}", parameters: {weight: 1}}
        merge_method: linear
        base_model: "{BF}"
    """,
    "mixed_dtypes_passthrough": """
        slices:
          - sources: [{model: "{BF}", layer_range: [0, 3]}]
          - sources: [{model: "{F32}", layer_range: [3, 6]}]
        merge_method: passthrough
        base_model: "{BF}"
    """,
    "float32_dtype_bf16_donors": """
        slices:
          - sources:
              - {model: "{BF}", layer_range: [0, 6]}
              - {model: "{BF2}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{BF}"
        parameters: {t: 0.4}
        dtype: float32
    """,
    "out_dtype_differs": """
        models:
          - {model: "{BF}", parameters: {weight: 0.5}}
          - {model: "{BF2}", parameters: {weight: 0.5}}
        merge_method: ties
        base_model: "{A}"
        dtype: float32
        out_dtype: bfloat16
    """,
    "tokenizer_token_overrides": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{V98}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.5}
        tokenizer:
          source: union
          tokens:
            <extra_96>: {source: {kind: model_token, model: "{V98}", token: "tok5"}}
            <extra_97>: {source: {kind: zero}}
            tok7: {source: "{V98}", force: true}
          pad_to_multiple_of: 32
    """,
    "tokenizer_source_model_linear": """
        models:
          - {model: "{A}", parameters: {weight: 0.5}}
          - {model: "{V98}", parameters: {weight: 0.5}}
        merge_method: linear
        base_model: "{A}"
        tokenizer_source: "{V98}"
    """,
    # A tied donor's lm_head is its embeddings (mergekit's tied_names), in either role.
    "tied_donor_is_base": """
        slices:
          - sources:
              - {model: "{TL}", layer_range: [0, 6]}
              - {model: "{A}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{TL}"
        parameters: {t: 0.5}
    """,
    "tied_donor_is_other": """
        slices:
          - sources:
              - {model: "{A}", layer_range: [0, 6]}
              - {model: "{TL}", layer_range: [0, 6]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.5}
    """,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity_more"), DONORS, RECIPES, SEED)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_output_equals_mergekit(workspace, name):
    ours, theirs = run_ours(workspace, name).folder, workspace.mergekit_folder(name)
    assert_same_model(ours, theirs, config_keys=("num_hidden_layers", "vocab_size", "architectures"))
    if "lm_head.weight" not in folder_weights(ours):
        assert folder_config(ours)["tie_word_embeddings"] == folder_config(theirs)["tie_word_embeddings"]
    # The same files, plus our recipe copy and model card.
    ours_files = {p.name for p in ours.iterdir()} - {"README.md", "mergekit_config.yml"}
    assert ours_files == {p.name for p in theirs.iterdir()}


def test_mixed_dtypes_are_promoted_like_mergekit(workspace):
    ours = run_ours(workspace, "mixed_dtypes_slerp", run="dtypes").folder
    assert {t.dtype for t in folder_weights(ours).values()} == {torch.float32}


def test_tied_base_with_merged_head_unties_the_config(workspace):
    """mergekit writes the merged lm_head but keeps the tied base's tie_word_embeddings: true, so
    transformers ignores the head at load; our config unties it and says so."""
    ours = run_ours(workspace, "tied_donor_is_base", run="tied")
    assert any("tie_word_embeddings: false" in w for w in ours.warnings)
    assert "lm_head.weight" in folder_weights(ours.folder)
    assert folder_config(ours.folder)["tie_word_embeddings"] is False
