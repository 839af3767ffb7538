"""Donor inspection without reading weights: folders, safetensors headers, .bin pickles, resolution."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from merger_gui.core.donor import TensorInfo, layer_index
from merger_gui.core.dtypes import dtype_code
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.inspect import donor_from_config, inspect_folder, sliding_window_layers
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.resolve import parse_donor_overrides, resolve_donor, resolve_recipe_donors
from merger_gui.core.safetensors_header import MAX_HEADER_BYTES, read_safetensors_header
from merger_gui.core.synthetic import DonorShape, donor_config, donor_tensor_shapes
from merger_gui.core.torch_pickle import read_torch_checkpoint


def assert_matches_written(info, shape: DonorShape, dtype: str) -> None:
    expected = donor_tensor_shapes(shape)
    weights = {t.name: t for t in info.tensors if not t.name.endswith("inv_freq")}
    assert {n: t.shape for n, t in weights.items()} == expected
    assert {t.dtype for t in weights.values()} == {dtype_code(dtype)}
    assert info.dtype == dtype
    assert info.num_layers == shape.num_layers
    assert info.hidden_size == shape.hidden_size
    assert info.num_heads == shape.num_heads
    assert info.num_kv_heads == shape.num_kv_heads
    assert info.head_dim == shape.effective_head_dim
    assert info.intermediate_size == shape.intermediate_size
    assert info.vocab_size == shape.vocab_size
    assert info.param_count == sum(int(np.prod(s)) for s in expected.values())
    for layer in range(shape.num_layers):
        names = {t.name for t in info.layer_tensors(layer)}
        assert names == {n for n in expected if n.startswith(f"model.layers.{layer}.")}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma"])
def test_folder_matches_what_write_donor_wrote(make_donor, family):
    shape = DonorShape(family=family, tie_word_embeddings=family == "gemma")
    folder = make_donor(family, shape, dtype="bfloat16")
    info = inspect_folder(folder)
    assert info.kind == "folder" and info.weight_format == "safetensors" and info.path == str(folder)
    assert info.family == ("llama" if family == "mistral" else family)
    assert info.model_type == family
    assert info.has_lm_head is not shape.tie_word_embeddings
    assert info.tie_word_embeddings is shape.tie_word_embeddings
    assert {t.file for t in info.tensors} == {"model.safetensors"}
    assert info.warnings == ()
    assert_matches_written(info, shape, "bfloat16")


def test_layer_order_is_natural(make_donor):
    info = inspect_folder(make_donor("a", DonorShape(num_layers=12)))
    layers = [layer_index(t.name) for t in info.tensors if layer_index(t.name) is not None]
    assert layers == sorted(layers) and layers[-1] == 11


def test_qwen2_biases_and_gemma_tied(make_donor):
    qwen = inspect_folder(make_donor("q", DonorShape(family="qwen2")))
    assert qwen.tensor("model.layers.0.self_attn.q_proj.bias").shape == (64,)
    assert qwen.tensor("model.layers.0.self_attn.k_proj.bias").shape == (32,)
    gemma = inspect_folder(make_donor("g", DonorShape(family="gemma", tie_word_embeddings=True)))
    assert not gemma.has_lm_head


def test_gemma_ties_by_default_when_config_omits_the_key(make_donor):
    folder = make_donor("g", DonorShape(family="gemma", tie_word_embeddings=True))
    config = json.loads((folder / "config.json").read_text())
    del config["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    assert inspect_folder(folder).tie_word_embeddings is True


def test_sharded_safetensors(make_donor):
    shape = DonorShape()
    info = inspect_folder(make_donor("s", shape, shards=3, dtype="float32"))
    assert len({t.file for t in info.tensors}) == 3
    assert_matches_written(info, shape, "float32")


def test_sharded_index_with_missing_shard(make_donor):
    folder = make_donor("s", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(DonorError, match="model-00002-of-00002.safetensors.*missing"):
        inspect_folder(folder)


def test_index_naming_a_tensor_its_shard_lacks(make_donor):
    folder = make_donor("s", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(DonorError, match="model.ghost.weight"):
        inspect_folder(folder)


def test_llama2_inv_freq_buffers_are_kept_but_not_counted(make_donor):
    shape = DonorShape()
    buffers = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32) for i in range(4)}
    info = inspect_folder(make_donor("l2", shape, extra_tensors=buffers))
    assert info.tensor("model.layers.0.self_attn.rotary_emb.inv_freq").dtype == "F32"
    assert all("inv_freq" not in t.name for t in info.layer_tensors(0))
    assert info.dtype == "float16"
    assert_matches_written(info, shape, "float16")


@pytest.mark.parametrize("shards", [1, 2])
def test_pytorch_bin(make_donor, shards):
    shape = DonorShape(family="qwen2")
    buffers = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
    folder = make_donor("b", shape, weight_format="bin", shards=shards, dtype="bfloat16", extra_tensors=buffers)
    info = inspect_folder(folder)
    assert info.weight_format == "bin"
    assert len({t.file for t in info.tensors}) == shards
    assert info.tensor("model.layers.0.self_attn.rotary_emb.inv_freq").dtype == "F32"
    assert_matches_written(info, shape, "bfloat16")


def test_bin_views_parameters_and_v3_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.zeros(4, 6)
    state = {
        "view": base[1:3],
        "param": torch.nn.Parameter(torch.ones(3, dtype=torch.float16)),
        "fp8": torch.zeros(5, dtype=torch.float8_e4m3fn),
        "flag": torch.zeros(2, dtype=torch.bool),
    }
    torch.save(state, tmp_path / "w.bin")
    tensors = read_torch_checkpoint(tmp_path / "w.bin")
    assert {n: (t.shape, t.dtype) for n, t in tensors.items()} == {
        "view": ((2, 6), "F32"), "param": ((3,), "F16"), "fp8": ((5,), "F8_E4M3"), "flag": ((2,), "BOOL")}


class _Exploit:
    def __reduce__(self):
        import os
        return os.system, ("touch pwned",)


def _zip_with_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file = _zip_with_pickle(tmp_path / "evil.bin", pickle.dumps({"w": _Exploit()}, protocol=2))
    with pytest.raises(DonorError, match=r"refusing to load pickled object (os|posix)\.system"):
        read_torch_checkpoint(file)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload,message", [
    (pickle.dumps({"w": 3}), "not a tensor"),
    (pickle.dumps([1, 2]), "not a state dict"),
    (b"\x80\x02garbage", "cannot unpickle"),
])
def test_bin_that_is_not_a_state_dict(tmp_path, payload, message):
    with pytest.raises(DonorError, match=message):
        read_torch_checkpoint(_zip_with_pickle(tmp_path / "x.bin", payload))


def test_bin_tensor_larger_than_its_storage(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(4)}, tmp_path / "w.bin")
    with zipfile.ZipFile(tmp_path / "w.bin") as src, zipfile.ZipFile(tmp_path / "cut.bin", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:4] if item.filename.endswith("data/0") else data)
    with pytest.raises(DonorError, match="wrong size"):
        read_torch_checkpoint(tmp_path / "cut.bin")


def test_legacy_or_non_zip_bin(tmp_path):
    (tmp_path / "old.bin").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(DonorError, match="old.bin.*not a zip"):
        read_torch_checkpoint(tmp_path / "old.bin")


def _safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_valid_handmade_header(tmp_path):
    header = {"__metadata__": {"format": "pt"},
              "b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]},
              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    tensors = read_safetensors_header(_safetensors(tmp_path / "ok.safetensors", header, bytes(12)))
    assert tensors["a"].shape == (2,) and tensors["b"].dtype == "BF16" and tensors["a"].file == "ok.safetensors"


@pytest.mark.parametrize("header,data,length,message", [
    (b"{}", b"", 1 << 60, "exceeds"),
    (b"{}", b"", MAX_HEADER_BYTES - 1, "larger than the file"),
    (b"{not json", b"", None, "not valid JSON"),
    (b"[1, 2]", b"", None, "not a JSON object"),
    ({"a": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), None, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"", None, "past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), None, "needs 8"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), None, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, bytes(4), None, "invalid data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), None, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(6), None, "gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(9), None, "not described"),
    ({"a": "F32"}, bytes(4), None, "no dtype"),
    ({"__metadata__": [1]}, b"", None, "__metadata__"),
])
def test_hostile_headers(tmp_path, header, data, length, message):
    file = _safetensors(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(DonorError, match=message) as caught:
        read_safetensors_header(file)
    assert "bad.safetensors" in str(caught.value)


def test_truncated_file(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(DonorError, match="shorter than 8 bytes"):
        read_safetensors_header(tmp_path / "t.safetensors")


def test_missing_folder_and_missing_config(make_donor, tmp_path):
    with pytest.raises(DonorError, match="does not exist"):
        inspect_folder(tmp_path / "nowhere")
    folder = make_donor("a")
    (folder / "config.json").unlink()
    with pytest.raises(DonorError, match="no config.json"):
        inspect_folder(folder)


def test_folder_without_weights(make_donor):
    folder = make_donor("a")
    (folder / "model.safetensors").unlink()
    with pytest.raises(DonorError, match="no .safetensors or .bin weights"):
        inspect_folder(folder)


def test_config_without_needed_keys(make_donor):
    folder = make_donor("a")
    config = json.loads((folder / "config.json").read_text())
    del config["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DonorError, match="hidden_size"):
        inspect_folder(folder)


def test_config_facts_defaults_and_dtype_fallback():
    config = donor_config(DonorShape(num_kv_heads=4))
    del config["num_key_value_heads"], config["torch_dtype"]
    config["dtype"] = "bfloat16"  # transformers v5 spelling
    info = donor_from_config("x", "folder", config, ())
    assert info.num_kv_heads == info.num_heads == 4 and info.head_dim == 16 and info.dtype == "bfloat16"
    del config["dtype"]
    tensors = (TensorInfo("a", (10,), "F32"), TensorInfo("b", (100,), "F16"), TensorInfo("c", (5,), "F32"))
    assert donor_from_config("x", "folder", config, tensors).dtype == "float16"
    with pytest.raises(DonorError, match="no dtype"):
        donor_from_config("x", "folder", config, ())


def test_declared_dtype_differing_from_stored_warns():
    info = donor_from_config("x", "folder", donor_config(DonorShape(), "float32"), (TensorInfo("a", (4,), "BF16"),))
    assert info.dtype == "float32" and "stored as bfloat16" in info.warnings[0]


def test_unknown_family_infers_layers_from_names():
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8, "n_head": 2,
              "vocab_size": 10, "torch_dtype": "float32"}
    tensors = tuple(TensorInfo(f"transformer.h.{i}.attn.c_attn.weight", (8, 24), "F32") for i in range(3))
    info = donor_from_config("gpt", "folder", config, tensors)
    assert info.family == "unknown" and info.num_layers == 3 and info.hidden_size == 8
    assert info.tie_word_embeddings and "unsupported architecture GPT2LMHeadModel" in info.warnings[0]
    assert len(info.layer_tensors(2)) == 1


@pytest.mark.parametrize("config,window,layers", [
    ({"model_type": "mistral", "sliding_window": 4096}, 4096, (True,) * 4),
    ({"model_type": "mistral", "sliding_window": None}, None, None),
    ({"model_type": "mistral"}, 4096, (True,) * 4),  # MistralConfig's default
    ({"model_type": "llama"}, None, None),
    ({"model_type": "gemma2", "sliding_window": 4096}, 4096, (True, False, True, False)),
    ({"model_type": "gemma2", "sliding_window": 512,
      "layer_types": ["full_attention", "sliding_attention"] * 2}, 512, (False, True, False, True)),
    ({"model_type": "qwen2", "sliding_window": 131072, "use_sliding_window": False}, None, None),
    ({"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": True, "max_window_layers": 2},
     64, (False, False, True, True)),
])
def test_sliding_window_layers(config, window, layers):
    assert sliding_window_layers(config, config["model_type"], 4) == (window, layers)


def test_sliding_window_matches_transformers():
    transformers = pytest.importorskip("transformers")
    for model_type, extra in (("gemma2", {}), ("qwen2", {"use_sliding_window": True, "max_window_layers": 3}),
                              ("mistral", {"sliding_window": 128})):
        config = transformers.AutoConfig.for_model(model_type, num_hidden_layers=6, **extra)
        facts = {"model_type": model_type, "sliding_window": config.sliding_window, **extra}
        layer_types = getattr(config, "layer_types", None) or ["sliding_attention"] * 6  # Mistral: every layer
        expected = tuple(t == "sliding_attention" for t in layer_types)
        assert sliding_window_layers(facts, model_type, 6)[1] == expected, model_type


def test_parse_donor_overrides():
    assert parse_donor_overrides(["a=profile:mistral-7b", "b = ./x=y ", "a=c"]) == {"a": "c", "b": "./x=y"}
    for bad in ("noequals", "=ref", "name="):
        with pytest.raises(UserError, match="NAME=REF"):
            parse_donor_overrides([bad])


def test_resolve_donor_kinds(make_donor):
    folder = make_donor("local")
    assert resolve_donor(str(folder)).kind == "folder"
    assert resolve_donor("profile:mistral-7b").kind == "profile"
    with pytest.raises(DonorError, match="unknown profile 'nope'"):
        resolve_donor("profile:nope")
    with pytest.raises(DonorError, match=r"^donor './missing' not found \(no such folder\)$"):
        resolve_donor("./missing")
    with pytest.raises(DonorError, match=r"^donor 'Thorns-13B' not found \(not a folder, not an org/name Hub"):
        resolve_donor("Thorns-13B", name="Thorns-13B")
    with pytest.raises(DonorError,
                       match=r"^donor 'm': Hub repo org/absent@main is not in the local Hugging Face cache"):
        resolve_donor("org/absent@main", name="m")  # HF_HUB_OFFLINE=1 and an empty cache
    with pytest.raises(DonorError, match=r"cannot look up LoRA adapter org/some-lora on the Hub"):
        resolve_donor(f"{folder}+org/some-lora")  # mergekit's model+lora form, offline
    with pytest.raises(DonorError, match=r"LoRA adapter './no-adapter' not found"):
        resolve_donor(f"{folder}+./no-adapter")
    plus_folder = make_donor("a+b")  # a real folder whose name has a plus is just a folder
    assert resolve_donor(str(plus_folder)).kind == "folder"
    folder_without_config = make_donor("broken")
    (folder_without_config / "config.json").unlink()
    with pytest.raises(DonorError, match=r"^donor 'b': .*broken has no config\.json$"):
        resolve_donor(str(folder_without_config), name="b")


def test_resolve_recipe_donors(make_donor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    make_donor("alpha")
    stages = (
        Stage("passthrough", slices=(Slice((SliceSource("alpha", (0, 2)),)), Slice((SliceSource("beta", (0, 2)),)))),
        Stage("passthrough", name="second",
              slices=(Slice((SliceSource("first", (0, 4)),)), Slice((SliceSource("ghost", (0, 1)),)))),
    )
    recipe = Recipe((Stage("passthrough", name="first", slices=stages[0].slices), stages[1]))
    donors, errors = resolve_recipe_donors(recipe, {"beta": "profile:llama-2-7b"}, base_dir=tmp_path)
    assert set(donors) == {"alpha", "beta"} and set(errors) == {"ghost"}
    assert donors["alpha"].kind == "folder" and donors["alpha"].display_name == "alpha"
    assert donors["beta"].ref == "profile:llama-2-7b"
    assert errors["ghost"].startswith("donor 'ghost' not found")
    assert "\n" not in errors["ghost"]

