"""mergekit 0.1.5's other recipe forms merged as mergekit merges them: the ``modules:`` form
(one ``default`` module, with its own parameters) and MODEL+LORA references (a PEFT adapter
applied to its model's weights before merging). Every mergekit merge runs in one subprocess."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.recipe_yaml import load_recipe_text  # noqa: E402
from merger_gui.core.resolve import resolve_recipe_donors  # noqa: E402
from merger_gui.core.synthetic import DonorShape  # noqa: E402
from merger_gui.engine.run import MergeOptions, run_merge  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=96)
SEED = 11
CONFIG_KEYS = ("num_hidden_layers", "vocab_size")



def write_adapter(folder: Path, seed: int, dtype: torch.dtype, targets: dict[str, tuple[int, int]], r: int = 4,
                  alpha: float = 8, rslora: bool = False) -> Path:
    """A PEFT LoRA adapter folder (no peft needed): random lora_A/lora_B of each target module
    (name suffix → (out, in) features) in every layer, as ``save_pretrained`` names them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(SHAPE.num_layers):
        for module, (out_features, in_features) in targets.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_features, generator=generator).to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, r, generator=generator).to(dtype)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "bias": "none",
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in targets}), "task_type": "CAUSAL_LM",
              "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


HIDDEN, INTER = SHAPE.hidden_size, SHAPE.intermediate_size
DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 1}),
    "B": (SHAPE, {"seed": 2}),
    "C": (SHAPE, {"seed": 3}),
    "E": (SHAPE, {"seed": 4, "dtype": "bfloat16"}),
    "F": (SHAPE, {"seed": 5, "dtype": "bfloat16"}),
    # float32 factors on q and down projections; bfloat16 rank-stabilised factors on o and up projections
    "LA": partial(write_adapter, seed=7, dtype=torch.float32,
                  targets={"self_attn.q_proj": (HIDDEN, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}),
    "LR": partial(write_adapter, seed=8, dtype=torch.bfloat16, r=8, alpha=16, rslora=True,
                  targets={"self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.up_proj": (INTER, HIDDEN)}),
}

RECIPES = {
    "modules_slices": """\
        modules:
          default:
            slices:
              - sources:
                  - {model: "{A}", layer_range: [0, 2]}
                  - {model: "{B}", layer_range: [0, 2]}
              - sources:
                  - {model: "{A}", layer_range: [2, 4]}
                  - {model: "{B}", layer_range: [2, 4]}
                parameters: {t: 0.7}
            parameters: {t: [0.1, 0.9]}
        merge_method: slerp
        base_model: "{A}"
        parameters: {t: 0.5}
        dtype: float32
    """,
    "modules_models": """\
        modules:
          default:
            models:
              - {model: "{B}", parameters: {weight: 0.6, density: 0.5}}
              - {model: "{C}", parameters: {weight: 0.4, density: 0.7}}
            parameters: {normalize: false}
        merge_method: ties
        base_model: "{A}"
        parameters: {normalize: true}
        dtype: float16
    """,
}
LORA_RECIPES = {
    "lora_linear": """\
        models:
          - {model: "{A}+{LA}", parameters: {weight: 0.5}}
          - {model: "{B}", parameters: {weight: 0.5}}
        merge_method: linear
        dtype: float16
    """,
    "lora_passthrough": """\
        slices:
          - sources: [{model: "{A}+{LA}", layer_range: [0, 2]}]
          - sources: [{model: "{B}", layer_range: [2, 4]}]
        merge_method: passthrough
    """,
    "lora_rslora_bf16": """\
        models:
          - {model: "{F}+{LR}", parameters: {weight: 0.7}}
          - {model: "{E}+{LA}", parameters: {weight: 0.4}}
        merge_method: task_arithmetic
        base_model: "{E}"
        dtype: bfloat16
    """,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("forms"), DONORS, {**RECIPES, **LORA_RECIPES}, SEED)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_engine_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name), CONFIG_KEYS)


def _run_resolved(workspace: ParityWorkspace, name: str) -> Path:
    """Our merge of recipe ``name`` with its donors resolved as the CLI does (MODEL+LORA included)."""
    recipe = load_recipe_text(workspace.recipe_text(name))
    donors, errors = resolve_recipe_donors(recipe, {})
    assert not errors, errors
    out = workspace.ours_folder(name)
    assert list(run_merge(recipe, donors, out, MergeOptions(seed=workspace.seed)))
    return out


@pytest.mark.parametrize("name", sorted(LORA_RECIPES))
def test_lora_donor_output_equals_mergekit(workspace, name):
    # PEFT's merge_and_unload, then the merge: the adapted tensors agree bit for bit.
    assert_same_model(_run_resolved(workspace, name), workspace.mergekit_folder(name), CONFIG_KEYS)


def test_lora_changes_exactly_its_targets(workspace):
    from model_folder import folder_weights

    ours, donor = folder_weights(workspace.ours_folder("lora_passthrough")), folder_weights(workspace.donors["A"])
    from_a = [n for n in donor if n.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens"))]
    changed = {n for n in from_a if not torch.equal(ours[n], donor[n])}
    assert changed == {f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj")}
