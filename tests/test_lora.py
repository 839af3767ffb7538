"""MODEL+LORA donors: references resolved with their adapter, its download counted and shown,
adapters that do not fit their model or that we do not apply refused in one line, the delta
applied as PEFT merges it (parity with mergekit is in test_parity_forms)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from hub_server import FakeHub, go_online, use_cache
from merger_gui.cli import main as cli_main
from merger_gui.core.errors import DonorError
from merger_gui.core.estimator import COPY_ENGINE_BYTES, estimate_plan, stage_peak_ram_bytes
from merger_gui.core.lora_config import LoraConfig, adapter_facts, check_adapter_reference, split_lora_reference
from merger_gui.core.plan import plan_recipe
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.resolve import resolve_donor, resolve_recipe_donors

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from merger_gui.core.errors import UserError  # noqa: E402
from merger_gui.engine import run as run_module  # noqa: E402
from merger_gui.engine.lora import donor_adapters, load_adapter  # noqa: E402
from merger_gui.engine.run import DownloadProgress, MergeDone, MergeOptions, StageFinished, run_merge  # noqa: E402

Q_PROJ = "model.layers.0.self_attn.q_proj"
PASSTHROUGH = "slices: [{sources: [{model: MODEL, layer_range: [0, 4]}]}]\nmerge_method: passthrough\n"


def adapter(folder, config: dict | None = None, extra: dict | None = None,
            modules: dict[str, tuple[int, int]] | None = None, rank_b: int = 2):
    """A PEFT adapter folder: ones as the r = 2 factors of each module (name → (out, in) features)."""
    folder.mkdir()
    tensors = {}
    for module, (out_features, in_features) in (modules or {Q_PROJ: (64, 64)}).items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.ones(2, in_features)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.ones(out_features, rank_b)
    save_file({**tensors, **(extra or {})}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                            **(config or {})}))
    return folder


def test_scaling_is_alpha_over_r_or_over_its_root():
    assert LoraConfig(16, 32).scaling == 2.0
    assert LoraConfig(16, 32, use_rslora=True).scaling == 8.0


def test_adapter_facts_read_from_its_config(tmp_path, monkeypatch):
    folder = adapter(tmp_path / "lora", {"lora_alpha": 32, "target_modules": "all-linear"})
    facts = adapter_facts(str(folder))
    assert facts.config == LoraConfig(2, 32.0) and facts.target_modules == ("all-linear",)
    assert facts.label == "+ LoRA r=2" and "r=2, lora_alpha=32, rsLoRA no → scaling 16" in facts.describe()
    use_cache(monkeypatch, tmp_path / "hf" / "hub")  # a Hub adapter not downloaded yet: no rank to show
    remote = adapter_facts("org/lora@v1")
    assert remote.config is None and remote.label == "+ LoRA" and "once it is downloaded" in remote.describe()[1]
    with pytest.raises(DonorError, match="not a folder, not an org/name Hub repo id"):
        check_adapter_reference("a+b")
    check_adapter_reference("org/lora@v1")


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
    files = [SimpleNamespace(rfilename="adapter_config.json", size=345),
             SimpleNamespace(rfilename="adapter_model.safetensors", size=12000)]
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: SimpleNamespace(
        model_info=lambda repo, revision=None, files_metadata=False: SimpleNamespace(siblings=files)))
    donor = resolve_donor(f"{make_donor('m')}+org/lora@v1")
    assert donor.adapter == "org/lora@v1" and donor.download_bytes == 12345
    files.pop()
    with pytest.raises(DonorError, match="org/lora has no adapter_model.safetensors, so it is not a PEFT LoRA"):
        resolve_donor(f"{make_donor('n')}+org/lora")


@pytest.mark.parametrize("config, extra, message", [
    ({"use_dora": True}, None, "uses use_dora"),
    ({"peft_type": "IA3"}, None, "not a LoRA adapter"),
    ({"bias": "all"}, None, "bias: all"),
    ({"modules_to_save": ["lm_head"]}, None, "uses modules_to_save, which merger_gui does not apply"),
    (None, {"base_model.model.lm_head.weight": torch.ones(96, 64)}, "is not a LoRA factor"),
    (None, {"base_model.model.model.embed_tokens.lora_embedding_A": torch.ones(2, 96),
            "base_model.model.model.embed_tokens.lora_embedding_B": torch.ones(64, 2)}, "has an embedding LoRA"),
])
def test_variants_we_do_not_apply_are_refused(tmp_path, config, extra, message):
    folder = adapter(tmp_path / "lora", config, extra)
    with pytest.raises(DonorError, match=message):
        load_adapter(str(folder), "donor m")


def test_folder_without_config_is_not_an_adapter(make_donor, tmp_path):
    folder = adapter(tmp_path / "lora")
    (folder / "adapter_config.json").unlink()
    with pytest.raises(DonorError, match=r"lora has no adapter_config.json, so it is not a PEFT adapter folder$"):
        resolve_donor(f"{make_donor('m')}+{folder}")


@pytest.mark.parametrize("modules, rank_b, message", [
    ({"transformer.h.0.attn.c_attn": (64, 64)}, 2, "target modules match no tensor of the model"),
    ({f"model.layers.{i}.self_attn.q_proj": (64, 64) for i in range(6)}, 2,
     "changes 2 tensors the model does not have"),
    ({Q_PROJ: (128, 128)}, 2, r"delta of model.layers.0.self_attn.q_proj.weight is \(128, 128\), the model's "
                              r"tensor \(64, 64\): an adapter for another model size"),
    ({Q_PROJ: (64, 64)}, 3, "have ranks 2 \\(A\\) and 3 \\(B\\), the adapter's r is 2"),
])
def test_adapter_of_another_model_is_refused_when_resolved(make_donor, tmp_path, modules, rank_b, message):
    folder = adapter(tmp_path / "lora", modules=modules, rank_b=rank_b)
    with pytest.raises(DonorError, match=message) as caught:
        resolve_donor(f"{make_donor('m')}+{folder}")
    assert "\n" not in str(caught.value)


def test_adapter_that_does_not_fit_is_refused_before_reading(make_donor, tmp_path):
    # A Hub adapter is checked once downloaded, when the merge opens its donors.
    donor = resolve_donor(str(make_donor("m")))
    wide = adapter(tmp_path / "lora", modules={Q_PROJ: (64, 128)})
    with pytest.raises(DonorError, match="an adapter for another model size"):
        donor_adapters({"m": replace(donor, adapter=str(wide))})


def test_cli_merge_refuses_a_misfit_adapter_in_one_line(make_donor, tmp_path, capsys):
    folder = adapter(tmp_path / "lora", modules={"model.layers.7.mlp.up_proj": (128, 64)})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(PASSTHROUGH.replace("MODEL", f"{make_donor('m')}+{folder}"))
    assert cli_main(["merge", str(recipe), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert "match no tensor of the model" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_delta_is_added_in_float32_and_rounded_once(tmp_path):
    lora = load_adapter(str(adapter(tmp_path / "lora")), "donor m")
    weight = torch.full((64, 64), 1.0, dtype=torch.float16)
    merged = lora.apply(f"{Q_PROJ}.weight", weight)
    assert merged.dtype == torch.float16 and torch.equal(merged, torch.full((64, 64), 5.0, dtype=torch.float16))
    assert torch.equal(weight, torch.ones(64, 64, dtype=torch.float16))  # the input is left alone
    assert lora.apply("model.layers.0.self_attn.k_proj.weight", weight) is weight
    with pytest.raises(DonorError, match="trained on another model"):
        lora.apply(f"{Q_PROJ}.weight", torch.zeros(64, 8))


def test_hub_adapter_downloads_with_progress_once_and_is_estimated(make_donor, tmp_path, monkeypatch):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    size = sum(f.stat().st_size for f in lora.iterdir())
    recipe = load_recipe_text(PASSTHROUGH.replace("MODEL", f"{model}+org/lora"))
    use_cache(monkeypatch, tmp_path / "hf" / "hub")
    with FakeHub({"org/lora": lora}) as hub:
        go_online(monkeypatch, hub)
        donors, errors = resolve_recipe_donors(recipe, {})
        assert not errors and estimate_plan(plan_recipe(recipe, donors), donors).merge.download_bytes == size
        events = list(run_merge(recipe, donors, tmp_path / "hub-out"))
        again, _ = resolve_recipe_donors(recipe, {})
        list(run_merge(recipe, again, tmp_path / "again"))
    files = {(e.model, e.file) for e in events if isinstance(e, DownloadProgress) and e.downloaded == e.total}
    assert files == {(f"{model}+org/lora", "adapter_config.json"), (f"{model}+org/lora", "adapter_model.safetensors")}
    assert [p for p in hub.full_downloads() if p.endswith(".safetensors")] == ["org/lora/adapter_model.safetensors"]
    assert next(iter(again.values())).download_bytes == 0

    local = load_recipe_text(PASSTHROUGH.replace("MODEL", f"{model}+{lora}"))
    list(run_merge(local, resolve_recipe_donors(local, {})[0], tmp_path / "local-out"))
    ours, expected = load_file(tmp_path / "hub-out" / "model.safetensors"), load_file(tmp_path / "local-out" /
                                                                                      "model.safetensors")
    assert ours.keys() == expected.keys() and all(torch.equal(ours[n], expected[n]) for n in ours)
    assert not torch.equal(ours[f"{Q_PROJ}.weight"], load_file(model / "model.safetensors")[f"{Q_PROJ}.weight"])


def test_estimate_counts_the_adapter_in_peak_ram(make_donor, tmp_path):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    peaks = []
    for reference in (str(model), f"{model}+{lora}"):
        recipe = load_recipe_text(PASSTHROUGH.replace("MODEL", reference))
        donors = resolve_recipe_donors(recipe, {})[0]
        peaks.append(stage_peak_ram_bytes(plan_recipe(recipe, donors).stages[0], donors))
    # A plain passthrough copies bytes; with an adapter each tensor is read, widened and summed.
    assert peaks[0] == COPY_ENGINE_BYTES < peaks[1]


def test_a_stage_reading_a_lora_donor_is_reused_until_the_adapter_changes(make_donor, tmp_path):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    recipe = load_recipe_text(f"name: first\n{PASSTHROUGH.replace('MODEL', f'{model}+{lora}')}---\n"
                              "name: second\nmerge_method: passthrough\n"
                              "slices: [{sources: [{model: first, layer_range: [0, 4]}]}]\n")
    options = MergeOptions(intermediate_dir=tmp_path / "inter", overwrite=True)

    def reused() -> list[bool]:
        events = run_merge(recipe, resolve_recipe_donors(recipe, {})[0], tmp_path / "out", options)
        return [e.reused for e in events if isinstance(e, StageFinished)]

    assert reused() == [False, False] and reused() == [True, False]
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 8}))
    assert reused() == [False, False]
    first = load_file(tmp_path / "inter" / "first" / "model.safetensors")[f"{Q_PROJ}.weight"]
    assert torch.equal(first, torch.full((64, 64), 8.0, dtype=first.dtype)
                       + load_file(model / "model.safetensors")[f"{Q_PROJ}.weight"])


@pytest.mark.parametrize("model_on_hub", [False, True])
def test_disk_check_counts_the_hub_adapter_before_any_download(make_donor, tmp_path, monkeypatch, model_on_hub):
    model, lora = make_donor("m"), adapter(tmp_path / "lora")
    needed = sum(f.stat().st_size for f in lora.iterdir())
    if model_on_hub:
        needed += (model / "model.safetensors").stat().st_size  # the model's weights read by the plan
    recipe = load_recipe_text(PASSTHROUGH.replace("MODEL", f"{'org/m' if model_on_hub else model}+org/lora"))
    cache = use_cache(monkeypatch, tmp_path / "hf" / "hub")
    real, room = shutil.disk_usage, 1 << 40

    def disk_usage(path):
        usage = real(path)
        return usage._replace(free=room if Path(path).is_relative_to(cache) else usage.free)

    monkeypatch.setattr(run_module.shutil, "disk_usage", disk_usage)
    with FakeHub({"org/lora": lora, "org/m": model}) as hub:
        go_online(monkeypatch, hub)
        donors, errors = resolve_recipe_donors(recipe, {})
        assert not errors
        room, hub.requests[:] = needed - 1, []
        with pytest.raises(UserError, match="not enough disk space to download donors into") as caught:
            list(run_merge(recipe, donors, tmp_path / "refused"))
        assert "\n" not in str(caught.value) and hub.full_downloads() == [] and not (tmp_path / "refused").exists()
        room = needed
        assert isinstance(list(run_merge(recipe, donors, tmp_path / "out"))[-1], MergeDone)
    assert "org/lora/adapter_model.safetensors" in hub.full_downloads()


@pytest.fixture
def lora_and_merged(make_donor, tmp_path):
    """A donor, the same with an adapter (resolved), and the merge of the two written as a folder."""
    model = make_donor("m")
    lora = adapter(tmp_path / "lora", modules={Q_PROJ: (64, 64), "model.layers.0.mlp.down_proj": (64, 128)})
    recipe = load_recipe_text(PASSTHROUGH.replace("MODEL", f"{model}+{lora}"))
    donors = resolve_recipe_donors(recipe, {})[0]
    list(run_merge(recipe, donors, tmp_path / "merged"))
    return resolve_donor(str(model)), next(iter(donors.values())), tmp_path / "merged"


def test_weight_similarity_reads_a_lora_donor_with_its_adapter(lora_and_merged):
    from merger_gui.engine.layer_similarity import SimilarityDone, compare_layers

    plain, with_lora, merged = lora_and_merged

    def similarity(second):
        return [e for e in compare_layers([("a", plain), ("b", second)]) if isinstance(e, SimilarityDone)][0] \
            .result.similarity

    ours, expected = similarity(with_lora), similarity(resolve_donor(str(merged)))
    assert ours[0][0] < 0.99 and ours[1][1] == pytest.approx(1.0)  # only layer 0's q_proj is adapted
    assert ours == expected  # the merged tensors themselves, read either way


def test_activations_of_a_lora_donor_are_those_of_its_merged_model(lora_and_merged):
    pytest.importorskip("transformers")
    from merger_gui.engine.activation_analysis import ActivationOptions, ActivationsDone, analyze_activations

    plain, with_lora, merged = lora_and_merged
    events = list(analyze_activations([("lora", with_lora), ("merged", merged), ("plain", plain)],
                                      ActivationOptions(text="The quick brown fox jumps over the lazy dog. " * 4)))
    assert isinstance(events[-1], ActivationsDone)
    lora, expected, base = (d.layer_distance for d in events[-1].distances)
    assert lora == pytest.approx(expected, abs=1e-9) and abs(lora[0] - base[0]) > 1e-3


def test_an_adapter_transformers_cannot_place_is_refused_in_one_line(lora_and_merged, monkeypatch):
    pytest.importorskip("transformers")
    from merger_gui.engine import lora as lora_module
    from merger_gui.engine.activation_analysis import analyze_activations

    _, with_lora, _ = lora_and_merged
    real = lora_module.donor_adapters

    def renamed(donors):  # as if transformers named the weight otherwise than the checkpoint
        loaded = real(donors)
        return {m: replace(a, factors={f"x.{n}": f for n, f in a.factors.items()}) for m, a in loaded.items()}

    monkeypatch.setattr(lora_module, "donor_adapters", renamed)
    with pytest.raises(DonorError, match=r"^donor lora: transformers loads no weight x\.model\.layers\.0") as caught:
        list(analyze_activations([("lora", with_lora)]))
    assert "\n" not in str(caught.value)
