"""MODEL+LORA donors: references resolved with their adapter, its download counted, variants we do
not apply refused in one line, the delta applied as PEFT merges it (parity is in test_parity_forms)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub
import pytest

from merger_gui.core.errors import DonorError
from merger_gui.core.lora_config import LoraConfig, split_lora_reference
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.resolve import resolve_donor, resolve_recipe_donors

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from merger_gui.engine.lora import load_adapter  # noqa: E402


def adapter(folder, config: dict | None = None, extra: dict | None = None):
    folder.mkdir()
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(4, 2), **(extra or {})}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                            **(config or {})}))
    return folder


def test_scaling_is_alpha_over_r_or_over_its_root():
    assert LoraConfig(16, 32).scaling == 2.0
    assert LoraConfig(16, 32, use_rslora=True).scaling == 8.0


def test_split_follows_mergekit():
    assert split_lora_reference("org/m+org/a") == ("org/m", "org/a")
    assert split_lora_reference("org/m") == ("org/m", None)
    with pytest.raises(DonorError, match="single \\+"):
        split_lora_reference("a+b+c")


def test_local_model_plus_adapter_resolves_with_the_adapter(make_donor, tmp_path):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    donor = resolve_donor(f"{model}+{lora}")
    assert donor.adapter == str(lora) and donor.path == resolve_donor(str(model)).path
    assert donor.download_bytes == 0


def test_relative_parts_are_found_next_to_the_recipe(make_donor, tmp_path):
    model = make_donor("m")
    adapter(model.parent / "lora")
    recipe = load_recipe_text("models: [{model: m+lora}]\nmerge_method: linear\nparameters: {weight: 1}\n")
    donors, errors = resolve_recipe_donors(recipe, {}, base_dir=model.parent)
    assert not errors and donors["m+lora"].adapter == str(model.parent / "lora")


def test_hub_adapter_download_is_counted(make_donor, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: SimpleNamespace(
        get_paths_info=lambda repo, paths, revision=None: [SimpleNamespace(size=12345)]))
    donor = resolve_donor(f"{make_donor('m')}+org/lora@v1")
    assert donor.adapter == "org/lora@v1" and donor.download_bytes == 12345


@pytest.mark.parametrize("config, extra, message", [
    ({"use_dora": True}, None, "uses use_dora"),
    ({"peft_type": "IA3"}, None, "not a LoRA adapter"),
    ({"bias": "all"}, None, "bias: all"),
    (None, {"base_model.model.lm_head.weight": torch.ones(4, 4)}, "is not a LoRA factor"),
])
def test_variants_we_do_not_apply_are_refused(tmp_path, config, extra, message):
    folder = adapter(tmp_path / "lora", config, extra)
    with pytest.raises(DonorError, match=message):
        load_adapter(str(folder), "donor m")


def test_delta_is_added_in_float32_and_rounded_once(tmp_path):
    lora = load_adapter(str(adapter(tmp_path / "lora")), "donor m")
    weight = torch.full((4, 4), 1.0, dtype=torch.float16)
    merged = lora.apply("model.layers.0.self_attn.q_proj.weight", weight)
    assert merged.dtype == torch.float16 and torch.equal(merged, torch.full((4, 4), 5.0, dtype=torch.float16))
    assert lora.apply("model.layers.0.self_attn.k_proj.weight", weight) is weight
    with pytest.raises(DonorError, match="trained on another model"):
        lora.apply("model.layers.0.self_attn.q_proj.weight", torch.zeros(4, 8))
