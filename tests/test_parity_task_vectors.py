"""SCE, RAM and RAM+ (tensor-local) outputs must equal mergekit 0.1.5's bit for bit.

The donors are fine-tunes of one base: each changes a random part of the base's elements
by small amounts, some below RAM's ``epsilon`` and, in half precision, some too small to
survive rounding, so that elements changed by no model, by one and by several all occur.
Every mergekit merge runs in one subprocess.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.synthetic import DonorShape, random_tensors  # noqa: E402
from model_folder import folder_weights  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=96)
SEED = 7
BASE_SEED = 1


def fine_tune(seed: int, changed: float, scale: float) -> dict[str, np.ndarray]:
    """The base's weights with a ``changed`` share of elements moved by about ``scale``."""
    rng = np.random.default_rng(seed)
    tuned = {}
    for name, weights in random_tensors(SHAPE, seed=BASE_SEED).items():
        where = rng.random(weights.shape) < changed
        step = scale * rng.standard_normal(weights.shape) * rng.lognormal(0, 1, weights.shape)
        tuned[name] = (weights + where * step).astype(np.float32)
    return tuned


def _donor(dtype: str, tune: tuple[int, float, float] | None = None) -> DonorSpec:
    """The base in ``dtype``, or its ``fine_tune(*tune)``."""
    return SHAPE, {"dtype": dtype, "seed": BASE_SEED, "extra_tensors": fine_tune(*tune) if tune else None}


DONORS: dict[str, DonorSpec] = {
    "B": _donor("float16"),
    "F1": _donor("float16", (101, 0.5, 0.002)),
    "F2": _donor("float16", (102, 0.3, 0.004)),
    "F3": _donor("float16", (103, 0.7, 0.001)),
    "BB": _donor("bfloat16"),
    "BF1": _donor("bfloat16", (111, 0.5, 0.004)),
    "BF2": _donor("bfloat16", (112, 0.4, 0.003)),
    "BF3": _donor("bfloat16", (113, 0.6, 0.002)),
}

RECIPES: dict[str, str] = {
    "sce_default": """
        models:
          - {model: "{F1}"}
          - {model: "{B}"}
          - {model: "{F2}"}
          - {model: "{F3}"}
        merge_method: sce
        base_model: "{B}"
    """,
    "sce_topk_gradient_int8_mask": """
        models:
          - {model: "{F1}"}
          - {model: "{F2}"}
          - {model: "{F3}"}
        merge_method: sce
        base_model: "{B}"
        parameters: {select_topk: [0.1, 0.9], int8_mask: true}
    """,
    "sce_bf16_filtered_topk": """
        models:
          - {model: "{BF1}"}
          - {model: "{BF2}"}
          - {model: "{BF3}"}
        merge_method: sce
        base_model: "{BB}"
        parameters:
          select_topk: [{filter: self_attn, value: 0.35}, {filter: mlp, value: 0.0}, {value: 0.7}]
        dtype: bfloat16
    """,
    "sce_bf16_int8_mask": """
        models:
          - {model: "{BF1}"}
          - {model: "{BF2}"}
        merge_method: sce
        base_model: "{BB}"
        parameters: {select_topk: 0.5, int8_mask: true}
        dtype: bfloat16
    """,
    "ram_default": """
        models:
          - {model: "{F1}"}
          - {model: "{F2}"}
          - {model: "{F3}"}
        merge_method: ram
        base_model: "{B}"
    """,
    "ram_filtered_epsilon": """
        models:
          - {model: "{B}"}
          - {model: "{F1}"}
          - {model: "{F2}"}
          - {model: "{F3}"}
        merge_method: ram
        base_model: "{B}"
        parameters: {epsilon: [{filter: mlp, value: 0.003}, {value: [0.0005, 0.002]}]}
    """,
    "ram_bf16": """
        models:
          - {model: "{BF1}"}
          - {model: "{BF2}"}
          - {model: "{BF3}"}
        merge_method: ram
        base_model: "{BB}"
        parameters: {epsilon: 0.002}
        dtype: bfloat16
    """,
    # RAM+ computes in float32 from half-precision inputs (see test_ramplus_tl_stores_float32_*):
    # out_dtype makes both store the same dtype.
    "ramplus_tl_gradient": """
        models:
          - {model: "{F1}"}
          - {model: "{F2}"}
          - {model: "{F3}"}
        merge_method: ramplus_tl
        base_model: "{B}"
        parameters: {r: 0.6, alpha: [0.05, 2.0], epsilon: 0.001}
        out_dtype: float16
    """,
    "ramplus_tl_float32": """
        models:
          - {model: "{F1}"}
          - {model: "{F2}"}
        merge_method: ramplus_tl
        base_model: "{B}"
        parameters: {r: [{filter: self_attn, value: 1.5}, {value: 0.3}], alpha: 0.5}
        dtype: float32
    """,
    "ramplus_tl_bf16": """
        models:
          - {model: "{BB}"}
          - {model: "{BF1}"}
          - {model: "{BF2}"}
          - {model: "{BF3}"}
        merge_method: ramplus_tl
        base_model: "{BB}"
        parameters: {r: 0.25, alpha: 0.8, epsilon: 0.0025}
        dtype: bfloat16
        out_dtype: bfloat16
    """,
    "ramplus_tl_bf16_stored_as_computed": """
        models:
          - {model: "{BF1}"}
          - {model: "{BF2}"}
        merge_method: ramplus_tl
        base_model: "{BB}"
        dtype: bfloat16
    """,
}
# Compared in their own test: mergekit stores these in a dtype our plan does not predict yet.
STORED_DTYPE_RECIPES = {"ramplus_tl_bf16_stored_as_computed"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("parity_task_vectors"), DONORS, RECIPES, SEED)


@pytest.mark.parametrize("name", sorted(set(RECIPES) - STORED_DTYPE_RECIPES))
def test_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name))


def test_fine_tunes_exercise_every_branch(workspace):
    """The donors must make the tests meaningful: RAM sees unique and shared elements, and
    SCE's top-k selection changes the result."""
    ram = folder_weights(workspace.mergekit_folder("ram_bf16"))["model.layers.0.mlp.up_proj.weight"]
    tuned = [folder_weights(workspace.donors[n])["model.layers.0.mlp.up_proj.weight"] for n in ("BB", "BF1", "BF2")]
    changed = [(t - tuned[0]).abs() > 0.002 for t in tuned[1:]]
    unique = changed[0] ^ changed[1]
    assert 0 < unique.float().mean() < 1 and (changed[0] & changed[1]).any()
    assert not torch.equal(ram, tuned[0])
    default = folder_weights(workspace.mergekit_folder("sce_default"))
    selected = folder_weights(workspace.mergekit_folder("sce_topk_gradient_int8_mask"))
    assert not torch.equal(default["model.layers.1.self_attn.q_proj.weight"],
                           selected["model.layers.1.self_attn.q_proj.weight"])


def test_ramplus_tl_stores_float32_from_half_precision_like_mergekit(workspace):
    name = "ramplus_tl_bf16_stored_as_computed"
    assert folder_weights(workspace.mergekit_folder(name))["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name))
