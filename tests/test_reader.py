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
