"""mergekit 0.1.5's other recipe forms merged as mergekit merges them: the ``modules:`` form
(one ``default`` module, with its own parameters) and MODEL+LORA references (a PEFT adapter
applied to its model's weights before merging). Every mergekit merge runs in one subprocess."""

from __future__ import annotations

import pytest

pytest.importorskip("mergekit")
torch = pytest.importorskip("torch")

from merger_gui.core.synthetic import DonorShape  # noqa: E402
from parity import DonorSpec, ParityWorkspace, assert_same_model, build_workspace, run_ours  # noqa: E402

pytestmark = pytest.mark.mergekit

SHAPE = DonorShape(num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=96)
SEED = 11
CONFIG_KEYS = ("num_hidden_layers", "vocab_size")

DONORS: dict[str, DonorSpec] = {
    "A": (SHAPE, {"seed": 1}),
    "B": (SHAPE, {"seed": 2}),
    "C": (SHAPE, {"seed": 3}),
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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ParityWorkspace:
    return build_workspace(tmp_path_factory.mktemp("forms"), DONORS, RECIPES, SEED)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_engine_output_equals_mergekit(workspace, name):
    assert_same_model(run_ours(workspace, name).folder, workspace.mergekit_folder(name), CONFIG_KEYS)
