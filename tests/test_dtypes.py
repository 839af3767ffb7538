"""The dtype table and the tensor descriptor own their facts: every consumer agrees with them."""

from __future__ import annotations

import itertools
import json
import struct
import zipfile

import pytest
import torch
from safetensors import safe_open

from merger_gui.core.donor import TensorInfo
from merger_gui.core.dtypes import BY_CODE, DTYPES, PICKABLE_NAMES, dtype_code, dtype_label, promoted_dtype_code
from merger_gui.core.recipe import Recipe, Slice, SliceSource, Stage
from merger_gui.core.safetensors_header import read_safetensors_header
from merger_gui.core.torch_pickle import read_torch_checkpoint
from merger_gui.core.validation import validate_recipe
from merger_gui.engine.reader import TensorReader, torch_dtype
from merger_gui.engine.writer import ShardedWriter

SHAPE = (3, 5)


def _sample(code: str) -> torch.Tensor:
    """A small tensor of dtype ``code`` with varied bytes."""
    return torch.arange(15, dtype=torch.int64).reshape(SHAPE).to(torch.float32).div(3).to(torch_dtype(code))


def test_table_spellings_are_unique_and_resolve_back():
    for field in ("code", "torch_name", "label"):
        values = [getattr(d, field) for d in DTYPES]
        assert len(values) == len(set(values)), field
    for d in DTYPES:
        for spelling in (d.code, d.torch_name, f"torch.{d.torch_name}", *d.aliases):
            assert dtype_code(spelling) == d.code
        assert dtype_label(d.torch_name) == d.label
    assert dtype_label("no-such-dtype") == "no-such-dtype"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.code)
def test_reader_torch_dtype_matches_the_table(dtype):
    torch_type = torch_dtype(dtype.code)
    assert torch_type.itemsize == dtype.size
    assert torch_type.is_floating_point == (dtype.is_float or dtype.code.startswith("F8"))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.code)
def test_every_dtype_round_trips_through_writer_header_and_reader(tmp_path, dtype):
    """nbytes is what the writer writes, the header parser accepts, and the reader reads back bit for bit."""
    data = _sample(dtype.code)
    info = TensorInfo("w", SHAPE, dtype.code)
    writer = ShardedWriter(tmp_path, [info])
    writer.write("w", memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    writer.close()
    assert writer.bytes_written == info.nbytes == data.numel() * data.element_size()

    file = tmp_path / "model.safetensors"
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + length])["w"]["data_offsets"]
    assert end - begin == info.nbytes
    assert read_safetensors_header(file)["w"].nbytes == info.nbytes
    with safe_open(file, framework="pt") as stored:
        assert stored.get_tensor("w").dtype == torch_dtype(dtype.code)

    donor = TensorInfo("w", SHAPE, dtype.code, file.name)
    reader = TensorReader({"a": _donor(tmp_path, donor)})
    source = reader.locate("a", "w")
    assert source.info == donor
    assert torch.equal(reader.read(source).view(torch.uint8), data.view(torch.uint8))
    reader.close()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.code)
def test_every_dtype_is_read_from_a_torch_checkpoint(tmp_path, dtype):
    """The pickle reader (no torch) and the engine's .bin path name the same code as the table."""
    file = tmp_path / "pytorch_model.bin"
    torch.save({"w": _sample(dtype.code)}, file)
    assert zipfile.is_zipfile(file)
    info = read_torch_checkpoint(file)["w"]
    assert (info.dtype, info.shape, info.nbytes) == (dtype.code, SHAPE, _sample(dtype.code).numel() * dtype.size)
    reader = TensorReader({"a": _donor(tmp_path, info)})
    assert reader.locate("a", "w").info == info
    reader.close()


def test_float_promotion_is_torchs():
    floats = [d.code for d in DTYPES if d.is_float]
    for a, b in itertools.product(floats, repeat=2):
        expected = dtype_code(str(torch.promote_types(torch_dtype(a), torch_dtype(b))))
        assert promoted_dtype_code([a, b]) == expected, (a, b)


def test_validation_accepts_exactly_the_float_dtypes():
    def findings(dtype: str) -> set[str]:
        slice_ = Slice((SliceSource("m", (0, 1)),))
        recipe = Recipe((Stage("passthrough", slices=(slice_,), dtype=dtype),))
        return {f.code for f in validate_recipe(recipe, {})}

    for d in DTYPES:
        assert ("unknown-dtype" in findings(d.torch_name)) == (not d.is_float), d.code
    assert set(PICKABLE_NAMES) <= {d.torch_name for d in DTYPES if d.is_float}
    assert "unknown-dtype" in findings("float99")


def test_byte_count_has_one_expression():
    """Only TensorInfo multiplies an element count by a dtype's size; every other byte count asks it."""
    import re
    from pathlib import Path

    import merger_gui

    product = re.compile(r"(numel|prod\().*BY_CODE|BY_CODE.*(numel|prod\()|DTYPE_SIZES")
    root = Path(merger_gui.__file__).parent
    hits = sorted(f"{p.relative_to(root)}: {line.strip()}" for p in root.rglob("*.py")
                  for line in p.read_text().splitlines() if product.search(line))
    assert hits == ["core/donor.py: return self.numel * BY_CODE[self.dtype].size"]


def _donor(folder, info: TensorInfo):
    from merger_gui.core.donor import DonorInfo

    return DonorInfo(ref=str(folder), kind="folder", architecture="X", family="unknown", model_type="x",
                     num_layers=0, hidden_size=1, num_heads=1, num_kv_heads=1, head_dim=1, intermediate_size=1,
                     vocab_size=1, tie_word_embeddings=False, dtype=BY_CODE[info.dtype].torch_name,
                     tensors=(info,), path=str(folder), weight_format="safetensors")
