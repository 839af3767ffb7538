"""SCE, RAM and RAM+ (tensor-local) outputs must equal mergekit 0.1.5's bit for bit.

The donors are fine-tunes of one base: each changes a random part of the base's elements
by small amounts, some below RAM's ``epsilon`` and, in half precision, some too small to
survive rounding, so that elements changed by no model, by one and by several all occur.
Every mergekit merge runs in one subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.inspect import inspect_folder  # noqa: E402
from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.synthetic import DonorShape, random_tensors, write_donor  # noqa: E402
from merger_gui.engine.run import MergeOptions, run_merge  # noqa: E402
from model_folder import folder_weights  # noqa: E402
from test_parity_more import MERGEKIT_DRIVER  # noqa: E402

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


# name → (dtype, fine-tune or None for the base)
DONORS: dict[str, tuple[str, tuple[int, float, float] | None]] = {
    "B": ("float16", None),
    "F1": ("float16", (101, 0.5, 0.002)),
    "F2": ("float16", (102, 0.3, 0.004)),
    "F3": ("float16", (103, 0.7, 0.001)),
    "BB": ("bfloat16", None),
    "BF1": ("bfloat16", (111, 0.5, 0.004)),
    "BF2": ("bfloat16", (112, 0.4, 0.003)),
    "BF3": ("bfloat16", (113, 0.6, 0.002)),
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
def workspace(tmp_path_factory):
    """Donors, recipes and mergekit's output of every recipe, built once."""
    root = tmp_path_factory.mktemp("parity_task_vectors")
    donors = {
        name: write_donor(root / "donors" / name, SHAPE, dtype=dtype, seed=BASE_SEED,
                          extra_tensors=fine_tune(*tune) if tune else None)
        for name, (dtype, tune) in DONORS.items()
    }
    jobs = []
    for name, template in RECIPES.items():
        text = textwrap.dedent(template)
        for key in sorted(donors, key=len, reverse=True):
            text = text.replace("{" + key + "}", str(donors[key]))
        (root / f"{name}.yml").write_text(text)
        jobs.append({"recipe": str(root / f"{name}.yml"), "out": str(root / "mergekit" / name), "seed": SEED})
    result = subprocess.run([sys.executable, "-c", MERGEKIT_DRIVER, json.dumps(jobs)],
                            capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, donors


def _run_ours(root: Path, name: str, donors: dict[str, Path]) -> Path:
    text = (root / f"{name}.yml").read_text()
    infos = {str(p): inspect_folder(p) for p in donors.values() if str(p) in text}
    out = root / "ours" / name
    for _ in run_merge(load_recipe_text(text), infos, out, MergeOptions(seed=SEED)):
        pass
    return out


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


@pytest.mark.parametrize("name", sorted(set(RECIPES) - STORED_DTYPE_RECIPES))
def test_output_equals_mergekit(workspace, name):
    root, donors = workspace
    a = folder_weights(_run_ours(root, name, donors))
    b = folder_weights(root / "mergekit" / name)
    assert sorted(a) == sorted(b)
    for tensor in b:
        assert (a[tensor].dtype, a[tensor].shape) == (b[tensor].dtype, b[tensor].shape), tensor
        # Bit patterns, not values: signed zeros must match too.
        assert torch.equal(_bits(a[tensor]), _bits(b[tensor])), tensor


def test_fine_tunes_exercise_every_branch(workspace):
    """The donors must make the tests meaningful: RAM sees unique and shared elements, and
    SCE's top-k selection changes the result."""
    root, _ = workspace
    ram = folder_weights(root / "mergekit" / "ram_bf16")["model.layers.0.mlp.up_proj.weight"]
    tuned = [folder_weights(root / "donors" / n)["model.layers.0.mlp.up_proj.weight"] for n in ("BB", "BF1", "BF2")]
    changed = [(t - tuned[0]).abs() > 0.002 for t in tuned[1:]]
    unique = changed[0] ^ changed[1]
    assert 0 < unique.float().mean() < 1 and (changed[0] & changed[1]).any()
    assert not torch.equal(ram, tuned[0])
    default = folder_weights(root / "mergekit" / "sce_default")
    selected = folder_weights(root / "mergekit" / "sce_topk_gradient_int8_mask")
    assert not torch.equal(default["model.layers.1.self_attn.q_proj.weight"],
                           selected["model.layers.1.self_attn.q_proj.weight"])


def test_ramplus_tl_stores_float32_from_half_precision_like_mergekit(workspace):
    root, donors = workspace
    name = "ramplus_tl_bf16_stored_as_computed"
    a = folder_weights(_run_ours(root, name, donors))
    b = folder_weights(root / "mergekit" / name)
    assert b["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32
    for tensor in b:
        assert a[tensor].dtype == b[tensor].dtype, tensor
        assert torch.equal(a[tensor], b[tensor]), tensor
