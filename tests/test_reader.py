"""Reading donor tensors: copies that never write back, odd offsets, truncation (never a memory map)."""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger_gui.core.errors import DonorError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.synthetic import DonorShape, donor_config
from merger_gui.engine import reader as reader_module
from merger_gui.engine.reader import TensorReader

NAME = "model.layers.1.mlp.up_proj.weight"


def read(folder: Path, name: str) -> tuple[TensorReader, torch.Tensor]:
    reader = TensorReader({"a": inspect_folder(folder)})
    return reader, reader.read(reader.locate("a", name))


def test_a_read_tensor_is_the_donor_values_and_writes_stay_private(make_donor):
    folder = make_donor("a", seed=1)
    before = (folder / "model.safetensors").read_bytes()
    reader, tensor = read(folder, NAME)
    assert torch.equal(tensor, load_file(folder / "model.safetensors")[NAME])
    tensor.add_(1)
    assert torch.equal(reader.read(reader.locate("a", NAME)), load_file(folder / "model.safetensors")[NAME])
    reader.close()
    assert (folder / "model.safetensors").read_bytes() == before


def test_a_tensor_is_read_without_a_memory_map(make_donor, monkeypatch):
    """A mapped page of a file truncated meanwhile kills the process with SIGBUS."""
    def no_maps(*_args, **_kwargs):
        raise AssertionError("a donor was memory-mapped")

    monkeypatch.setattr(mmap, "mmap", no_maps)
    folder = make_donor("a", seed=1)
    reader, tensor = read(folder, NAME)
    assert torch.equal(tensor, load_file(folder / "model.safetensors")[NAME])
    reader.close()


def test_a_tensor_misaligned_for_its_dtype_is_read(tmp_path):
    """safetensors lets a float16 tensor start at an odd byte."""
    values = torch.tensor([1.5, -2.0, 3.25], dtype=torch.float16)
    header = {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "w": {"dtype": "F16", "shape": [3], "data_offsets": [3, 9]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = bytes([7, 8, 9]) + values.view(torch.uint8).numpy().tobytes()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    (tmp_path / "config.json").write_text(json.dumps(donor_config(DonorShape())))
    reader, tensor = read(tmp_path, "w")
    assert torch.equal(tensor, values)
    reader.close()


def test_a_donor_truncated_after_locating_is_reported(make_donor):
    folder = make_donor("a", seed=1)
    reader = TensorReader({"a": inspect_folder(folder)})
    source = reader.locate("a", "lm_head.weight")
    file = folder / "model.safetensors"
    with file.open("r+b") as handle:
        handle.truncate(source.offset + source.info.nbytes - 1)
    with pytest.raises(DonorError, match="lm_head.weight.*ends early"):
        reader.read(source)
    reader.close()


def test_a_donor_truncated_during_the_read_is_reported(make_donor, monkeypatch):
    folder = make_donor("a", seed=1)
    reader = TensorReader({"a": inspect_folder(folder)})
    source = reader.locate("a", "lm_head.weight")
    size = (folder / "model.safetensors").stat().st_size
    os.truncate(folder / "model.safetensors", source.offset + 10)
    real_fstat = os.fstat
    monkeypatch.setattr(reader_module.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], size, 0, 0, 0)))
    with pytest.raises(DonorError, match="lm_head.weight.*ends early"):
        reader.read(source)
    reader.close()


# --------------------------------------------------------------------------- .bin checkpoints


def bin_donor(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(donor_config(DonorShape())))
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def test_bin_tensors_read_as_torch_loads_them_views_and_dtypes_included(tmp_path, monkeypatch):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {"f32": base, "transposed": base.t(), "view": base[2:4, 3:8], "bf16": base.to(torch.bfloat16),
               "f16": torch.randn(5, 3).half(), "empty": torch.empty(0, 4), "ints": torch.arange(7)}
    folder = bin_donor(tmp_path / "bin", tensors)
    expected = torch.load(folder / "pytorch_model.bin", weights_only=True)
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: pytest.fail("a donor was memory-mapped"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load maps the whole archive"))
    reader = TensorReader({"a": inspect_folder(folder)})
    for name, tensor in expected.items():
        read_back = reader.read(reader.locate("a", name))
        assert read_back.dtype == tensor.dtype and torch.equal(read_back, tensor), name
        read_back.add_(1)  # a copy of its own, never the file's
    assert torch.equal(reader.read(reader.locate("a", "f32")), base)
    reader.close()


@pytest.mark.parametrize("cut", ["before opening", "after locating", "during the read"])
def test_a_bin_donor_truncated_after_inspection_is_a_one_line_error(tmp_path, monkeypatch, cut):
    folder = bin_donor(tmp_path / "bin", {"w": torch.randn(64, 64), "v": torch.randn(8)})
    file = folder / "pytorch_model.bin"
    size = file.stat().st_size
    reader = TensorReader({"a": inspect_folder(folder)})
    if cut == "before opening":  # the zip's directory, at the end, is gone
        os.truncate(file, size // 2)
        with pytest.raises(DonorError, match=r"^donor a: .*pytorch_model\.bin") as error:
            reader.read(reader.locate("a", "w"))
    else:
        source = reader.locate("a", "w")
        os.truncate(file, size // 2)
        if cut == "during the read":  # the size looked whole, then the reads came short
            real_fstat = os.fstat
            monkeypatch.setattr(reader_module.os, "fstat",
                                lambda fd: os.stat_result((*real_fstat(fd)[:6], size, 0, 0, 0)))
        with pytest.raises(DonorError, match=r"'w' of donor a: .*pytorch_model\.bin ends early") as error:
            reader.read(source)
    assert "\n" not in str(error.value)
    reader.close()


def test_a_bin_donor_truncated_mid_merge_ends_it_in_one_line_with_nothing_left(tmp_path):
    from merger_gui.core.recipe_yaml import load_recipe_text
    from merger_gui.engine.run import TensorProgress, run_merge
    from merger_gui.engine.output import PARTIAL_MARK
    from merger_gui.core.synthetic import write_donor

    shape = DonorShape(num_layers=2)
    donors = {m: write_donor(tmp_path / m, shape, seed=k, weight_format="bin") for k, m in enumerate("ab", 1)}
    recipe = load_recipe_text("merge_method: slerp\nbase_model: a\nparameters: {t: 0.5}\nslices:\n"
                              "- sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]\n")
    events = run_merge(recipe, {m: inspect_folder(f) for m, f in donors.items()}, tmp_path / "out")
    while not isinstance(next(events), TensorProgress):  # paused after its first tensor
        pass
    os.truncate(donors["b"] / "pytorch_model.bin", 1000)
    with pytest.raises(DonorError, match=r"of donor b: .*pytorch_model\.bin ends early \(truncated file\)$"):
        list(events)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]
