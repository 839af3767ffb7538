"""The merge engine: streaming passthrough, sharding, dtypes, cancel, disk full, multi-stage reuse, CLI."""

from __future__ import annotations

import ctypes
import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger_gui.cli import main as cli_main
from merger_gui.core.donor import TensorInfo
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.profiles import load_profile
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.synthetic import DonorShape, donor_config
from merger_gui.engine import run as run_module
from merger_gui.engine import writer as writer_module
from merger_gui.engine.run import (
    MergeCancelled, MergeDone, MergeOptions, MergeWarning, StageFinished, TensorProgress, run_merge,
)
from merger_gui.engine.writer import ShardedWriter

INTERLEAVE = """
merge_method: passthrough
base_model: a
dtype: float16
slices:
- sources: [{model: a, layer_range: [0, 2]}]
- sources: [{model: b, layer_range: [1, 3]}]
- sources: [{model: a, layer_range: [2, 4]}]
"""


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        part = load_file(file)
        assert not set(part) & set(tensors), "a tensor is stored twice"
        tensors.update(part)
    return tensors


def merge(recipe_text: str, donors: dict[str, Path], out: Path, **options) -> list:
    infos = {name: inspect_folder(path) for name, path in donors.items()}
    return list(run_merge(load_recipe_text(recipe_text), infos, out, MergeOptions(**options)))


def no_leftovers(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.fixture
def pair(make_donor):
    return {"a": make_donor("a", seed=1), "b": make_donor("b", seed=2, shards=2)}


def test_passthrough_interleave_is_bit_identical(pair, tmp_path):
    out = tmp_path / "out"
    events = merge(INTERLEAVE, pair, out)
    assert isinstance(events[-1], MergeDone) and events[-1].path == out
    merged, a, b = load_folder(out), load_folder(pair["a"]), load_folder(pair["b"])
    for k, (donor, layer) in enumerate([(a, 0), (a, 1), (b, 1), (b, 2), (a, 2), (a, 3)]):
        for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(merged[f"model.layers.{k}.{suffix}"], donor[f"model.layers.{layer}.{suffix}"])
    assert torch.equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(merged["lm_head.weight"], a["lm_head.weight"])
    assert len(merged) == 2 + 9 * 6 + 1
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vocab_size"], config["torch_dtype"]) == (6, 96, "float16")
    assert config["tie_word_embeddings"] is False
    assert {"tokenizer.json", "tokenizer_config.json", "mergekit_config.yml", "model.safetensors"} \
        <= {p.name for p in out.iterdir()}
    assert load_recipe_text((out / "mergekit_config.yml").read_text()) == load_recipe_text(INTERLEAVE)
    progress = [e for e in events if isinstance(e, TensorProgress)]
    assert [e.overall_index for e in progress] == list(range(1, len(merged) + 1))
    assert progress[-1].bytes_written == progress[-1].total_bytes == sum(t.nbytes for t in merged.values())


def run_mergekit(text: str, out: Path, seed: int | None = None) -> dict[str, torch.Tensor]:
    pytest.importorskip("mergekit")
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions as MergekitOptions

    mergekit_run(MergeConfiguration.model_validate(yaml.safe_load(text)), str(out),
                 MergekitOptions(random_seed=seed, quiet=True, write_model_card=False))
    return load_folder(out)


def with_paths(text: str, donors: dict[str, Path]) -> tuple[str, dict[str, Path]]:
    """The recipe with model names replaced by the donors' folders (mergekit needs real references)."""
    for name, path in donors.items():
        text = text.replace(f"model: {name}", f"model: {path}").replace(f"base_model: {name}", f"base_model: {path}")
    return text, {str(path): path for path in donors.values()}


SLERP = """
merge_method: slerp
base_model: a
dtype: float32
out_dtype: float16
parameters:
  t:
  - filter: self_attn
    value: [0, 0.5, 0.3, 0.7, 1]
  - filter: mlp
    value: [1, 0.5, 0.7, 0.3, 0]
  - value: 0.5
slices:
- sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 4]}]
"""
DARE = """
merge_method: dare_ties
base_model: a
dtype: bfloat16
models:
- model: a
- model: b
  parameters: {weight: 0.6, density: 0.5}
- model: c
  parameters: {weight: 0.4, density: [0.3, 0.8]}
"""
UNION = """
merge_method: linear
base_model: a
tokenizer_source: union
models:
- model: a
  parameters: {weight: 0.7}
- model: b
  parameters: {weight: 0.3}
"""


@pytest.mark.parametrize("recipe", [INTERLEAVE, SLERP, DARE, UNION], ids=["passthrough", "slerp", "dare_ties", "union"])
def test_matches_mergekit(make_donor, tmp_path, recipe):
    donors = {"a": make_donor("a", seed=1), "b": make_donor("b", seed=2, shards=2),
              "c": make_donor("c", seed=3)}
    if recipe is UNION:
        donors["b"] = make_donor("b2", DonorShape(vocab_size=100), seed=2, added_tokens=4)
    text, named = with_paths(recipe, donors)
    theirs = run_mergekit(text, tmp_path / "mk", seed=7)
    merge(text, named, tmp_path / "ours", seed=7)
    ours = load_folder(tmp_path / "ours")
    assert ours.keys() == theirs.keys()
    assert [n for n in ours if not torch.equal(ours[n], theirs[n])] == []
    config, reference = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("ours", "mk"))
    assert (config["num_hidden_layers"], config["vocab_size"]) == (reference["num_hidden_layers"],
                                                                   reference["vocab_size"])
    vocab, reference_vocab = (json.loads((tmp_path / d / "tokenizer.json").read_text())["model"]["vocab"]
                              for d in ("ours", "mk"))
    assert vocab.keys() == reference_vocab.keys()


def test_small_shard_size_writes_an_index(pair, tmp_path):
    out = tmp_path / "out"
    merge(INTERLEAVE, pair, out, shard_size=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    merged = load_folder(out)
    assert set(index["weight_map"]) == set(merged)
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in merged.values())


def test_writer_keeps_shards_under_the_limit(tmp_path):
    layouts = [TensorInfo(f"t{i}", (100,), "F32") for i in range(10)]
    writer = ShardedWriter(tmp_path, layouts, shard_size=1000)
    for layout in layouts:
        writer.write(layout.name, memoryview(torch.full((100,), float(layout.name[1:])).numpy()))
    writer.close()
    assert [len(s.tensors) for s in writer.shards] == [2] * 5
    merged = load_folder(tmp_path)
    assert all(torch.equal(merged[f"t{i}"], torch.full((100,), float(i))) for i in range(10))


def test_out_dtype_casts(pair, tmp_path):
    out = tmp_path / "out"
    merge(INTERLEAVE.replace("dtype: float16", "dtype: float32\nout_dtype: bfloat16"), pair, out)
    merged, a = load_folder(out), load_folder(pair["a"])
    assert merged["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"],
                       a["model.layers.0.mlp.up_proj.weight"].float().to(torch.bfloat16))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bin_donor(make_donor, tmp_path):
    donors = {"a": make_donor("a", seed=1, weight_format="bin"), "b": make_donor("b", seed=2)}
    out = tmp_path / "out"
    merge(INTERLEAVE, donors, out)
    merged = load_folder(out)
    a = torch.load(donors["a"] / "pytorch_model.bin", weights_only=True)
    assert torch.equal(merged["model.layers.5.self_attn.k_proj.weight"], a["model.layers.3.self_attn.k_proj.weight"])


def test_cancel_leaves_nothing(pair, tmp_path):
    out, cancel = tmp_path / "out", threading.Event()
    infos = {name: inspect_folder(path) for name, path in pair.items()}
    seen = 0
    with pytest.raises(MergeCancelled, match="nothing was written"):
        for event in run_merge(load_recipe_text(INTERLEAVE), infos, out, MergeOptions(), cancel):
            if isinstance(event, TensorProgress):
                seen += 1
                cancel.set()
    assert seen == 1 and no_leftovers(out)


def test_closing_the_generator_cleans_up(pair, tmp_path):
    out = tmp_path / "out"
    events = run_merge(load_recipe_text(INTERLEAVE), {n: inspect_folder(p) for n, p in pair.items()}, out)
    next(e for e in events if isinstance(e, TensorProgress))
    events.close()
    assert no_leftovers(out)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("merge-writer")]


def test_a_merge_writes_on_a_thread_that_ends_with_it(pair, tmp_path, monkeypatch):
    """Results are written one tensor behind the math; a run, a cancel and a close end the thread."""
    names: set[str] = set()
    write = writer_module.ShardedWriter.write

    def recording(self, name, data):
        names.add(threading.current_thread().name)
        write(self, name, data)

    monkeypatch.setattr(writer_module.ShardedWriter, "write", recording)
    infos = {name: inspect_folder(path) for name, path in pair.items()}
    merge(SLERP, pair, tmp_path / "done")
    assert [n.split("_")[0] for n in names] == ["merge-writer"] and writer_threads() == []
    cancel = threading.Event()
    with pytest.raises(MergeCancelled):
        for event in run_merge(load_recipe_text(SLERP), infos, tmp_path / "cancelled", MergeOptions(), cancel):
            if isinstance(event, TensorProgress) and event.index == 3:
                assert writer_threads()
                cancel.set()
    events = run_merge(load_recipe_text(SLERP), infos, tmp_path / "closed")
    next(e for e in events if isinstance(e, TensorProgress) and e.index == 3)
    events.close()
    assert writer_threads() == []
    assert no_leftovers(tmp_path / "cancelled") and no_leftovers(tmp_path / "closed")


def test_disk_full_while_writing_a_merged_tensor(pair, tmp_path, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_write_all", full)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"disk full while writing .* [GM]iB needed, .* [GM]iB free"):
        merge(SLERP, pair, out)
    assert no_leftovers(out) and writer_threads() == []


def test_disk_full_while_writing(pair, tmp_path, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_write_all", full)
    monkeypatch.setattr(writer_module, "_copy_range", full)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"disk full while writing .* [GM]iB needed, .* [GM]iB free"):
        merge(INTERLEAVE, pair, out)
    assert no_leftovers(out)


def test_disk_full_when_reserving_a_shard(pair, tmp_path, monkeypatch):
    def no_room(fd, mode, offset, length):
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(writer_module, "_fallocate", lambda: no_room)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"disk full while writing"):
        merge(INTERLEAVE, pair, out)
    assert no_leftovers(out)


def test_not_enough_space_is_refused_up_front(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda _p: type("U", (), {"free": 1000})())
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not enough disk space"):
        merge(INTERLEAVE, pair, out)
    assert no_leftovers(out)


def test_existing_output_needs_overwrite(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "old.safetensors").write_text("an earlier merge")
    with pytest.raises(UserError, match="already exists"):
        merge(INTERLEAVE, pair, out)
    assert (out / "old.safetensors").read_text() == "an earlier merge"
    merge(INTERLEAVE, pair, out, overwrite=True)
    assert not (out / "old.safetensors").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_corrupt_donor_is_reported_before_writing(pair, tmp_path):
    infos = {name: inspect_folder(path) for name, path in pair.items()}
    shard = next(pair["b"].glob("model-00002-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated after inspection
    out = tmp_path / "out"
    with pytest.raises(DonorError, match="donor b.*model-00002"):
        list(run_merge(load_recipe_text(INTERLEAVE), infos, out))
    assert no_leftovers(out)


def test_missing_weight_file_names_the_donor(pair, tmp_path):
    infos = {name: inspect_folder(path) for name, path in pair.items()}
    (pair["a"] / "model.safetensors").unlink()
    with pytest.raises(DonorError, match="donor a: weight file .*model.safetensors is missing"):
        list(run_merge(load_recipe_text(INTERLEAVE), infos, tmp_path / "out"))


def test_validation_errors_come_before_reading(pair, tmp_path, monkeypatch):
    def no_reading(*_args):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(run_module.TensorReader, "locate", no_reading)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not valid: stage 1 › slice 2"):
        merge(INTERLEAVE.replace("[1, 3]", "[1, 9]"), pair, out)
    assert no_leftovers(out)


def test_profile_donor_is_refused(pair, tmp_path):
    infos = {"a": inspect_folder(pair["a"]), "b": load_profile("llama-2-7b")}
    recipe = "merge_method: passthrough\nslices:\n- sources: [{model: b, layer_range: [0, 2]}]\n"
    with pytest.raises(UserError, match="profile"):
        list(run_merge(load_recipe_text(recipe), infos, tmp_path / "out"))


def test_tied_donor_gets_an_lm_head_warning(make_donor, tmp_path):
    donors = {"a": make_donor("a", seed=1), "t": make_donor("t", DonorShape(tie_word_embeddings=True), seed=3)}
    recipe = ("merge_method: passthrough\nbase_model: a\nslices:\n- sources: [{model: a, layer_range: [0, 2]}]\n"
              "- sources: [{model: t, layer_range: [2, 4]}]\n")
    out = tmp_path / "out"
    events = merge(recipe, donors, out)
    assert any("lm_head" in e.message for e in events if isinstance(e, MergeWarning))
    merged, tied = load_folder(out), load_folder(donors["t"])
    assert torch.equal(merged["lm_head.weight"], tied["model.embed_tokens.weight"])


MULTI = """
name: first
merge_method: passthrough
slices:
- sources: [{model: a, layer_range: [0, 3]}]
- sources: [{model: b, layer_range: [2, 4]}]
---
name: second
merge_method: passthrough
slices:
- sources: [{model: first, layer_range: [0, 4]}]
- sources: [{model: a, layer_range: [3, 4]}]
"""


def test_multi_stage_reuses_unchanged_intermediates(pair, tmp_path):
    out, inter = tmp_path / "out", tmp_path / "inter"
    first = merge(MULTI, pair, out, intermediate_dir=inter)
    finished = [e for e in first if isinstance(e, StageFinished)]
    assert [(e.name, e.reused) for e in finished] == [("first", False), ("second", False)]
    merged, a, b = load_folder(out), load_folder(pair["a"]), load_folder(pair["b"])
    assert torch.equal(merged["model.layers.3.mlp.up_proj.weight"], b["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.4.mlp.up_proj.weight"], a["model.layers.3.mlp.up_proj.weight"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    stamp = (inter / "first" / "model.safetensors").stat().st_mtime_ns

    again = merge(MULTI, pair, out, intermediate_dir=inter, overwrite=True)
    assert [e.reused for e in again if isinstance(e, StageFinished)] == [True, False]
    assert (inter / "first" / "model.safetensors").stat().st_mtime_ns == stamp

    changed = merge(MULTI.replace("[2, 4]", "[1, 3]"), pair, out, intermediate_dir=inter, overwrite=True)
    assert [e.reused for e in changed if isinstance(e, StageFinished)] == [False, False]
    assert torch.equal(load_folder(out)["model.layers.3.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])


def test_peak_memory_stays_bounded(tmp_path):
    """A ~200 MB donor merged with a dtype change (so every tensor is read and converted)."""
    shape = DonorShape(num_layers=6, hidden_size=1024, intermediate_size=4096, num_heads=8, num_kv_heads=8,
                       vocab_size=8192)
    donor = tmp_path / "big"
    donor.mkdir()
    (donor / "config.json").write_text(json.dumps(donor_config(shape)))
    from merger_gui.core.synthetic import donor_tensor_shapes

    layouts = [TensorInfo(n, s, "F16") for n, s in donor_tensor_shapes(shape).items()]
    writer = ShardedWriter(donor, layouts)
    for layout in layouts:
        writer.write(layout.name, memoryview(torch.randn(layout.shape, dtype=torch.float16).reshape(-1)
                                             .view(torch.uint8).numpy()))
    writer.close()
    size = sum(t.nbytes for t in layouts)
    assert size > 190e6
    script = f"""
import resource, json
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.engine.run import run_merge
recipe = load_recipe_text("merge_method: passthrough\\nout_dtype: bfloat16\\nslices:\\n"
                          "- sources: [{{model: big, layer_range: [0, 6]}}]\\n")
donors = {{"big": inspect_folder({str(donor)!r})}}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in run_merge(recipe, donors, {str(tmp_path / 'out')!r}): pass
print(json.dumps([before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    growth = (after - before) * 1024
    assert growth < size / 4, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB model"


def test_cli_merge_exit_codes(pair, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(INTERLEAVE)
    donors = [f"--donor=a={pair['a']}", f"--donor=b={pair['b']}"]
    out = tmp_path / "out"
    assert cli_main(["merge", str(recipe), str(out), *donors, "--shard-size", "50kB"]) == 0
    assert len(list(out.glob("*.safetensors"))) > 1
    assert "stage 1/1" in capsys.readouterr().err
    assert cli_main(["merge", str(recipe), str(out), *donors]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["merge", str(recipe), str(out), *donors, "--overwrite", "--no-copy-tokenizer"]) == 0
    assert not (out / "tokenizer.json").exists()


def test_cli_ctrl_c_exits_130(pair, tmp_path, capsys, monkeypatch):
    def interrupt(*_args, **_kwargs):
        yield TensorProgress("x", 1, 2, 1, 2, 10, 20, 0.1)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_merge", interrupt)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(INTERLEAVE)
    args = ["merge", str(recipe), str(tmp_path / "out"), f"--donor=a={pair['a']}", f"--donor=b={pair['b']}"]
    assert cli_main(args) == 130
    assert "cancelled: nothing was written" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2e9", 2 * 10**9),
                                            ("1GiB", 2**30), ("50kB", 50_000)])
def test_shard_size_parsing(text, size):
    from merger_gui.cli.merge_command import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("where", ["donor", "inside", "parent"])
def test_output_overlapping_a_donor_is_refused_before_reading(pair, tmp_path, monkeypatch, where):
    def no_reading(*_args):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(run_module.TensorReader, "locate", no_reading)
    out = {"donor": pair["a"], "inside": pair["a"] / "merged", "parent": pair["a"].parent}[where]
    before = sorted(p.name for p in pair["a"].iterdir())
    with pytest.raises(UserError, match=r"^the output folder .* donor a\b") as caught:
        merge(INTERLEAVE, pair, out, overwrite=True)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in pair["a"].iterdir()) == before


def test_intermediate_folder_equal_to_the_output_is_refused(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module.TensorReader, "locate", lambda *_: pytest.fail("a tensor was read"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="intermediate folder .* overlaps the output folder"):
        merge(MULTI, pair, out, intermediate_dir=out)
    assert no_leftovers(out)


def test_plain_passthrough_never_imports_torch(pair, tmp_path):
    """Byte copies need no tensor math: importing torch would cost a second and ~300 MB."""
    script = f"""
import sys
from merger_gui.cli import main
code = main(["merge", {str(tmp_path / 'recipe.yml')!r}, {str(tmp_path / 'out')!r},
             "--donor", "a={pair['a']}", "--donor", "b={pair['b']}"])
print(code, "torch" in sys.modules, "huggingface_hub" in sys.modules)
"""
    (tmp_path / "recipe.yml").write_text(INTERLEAVE)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
