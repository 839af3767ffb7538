"""What a merge may replace: --overwrite and intermediate stage folders never delete what a user keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from merger_gui.cli import main as cli_main
from merger_gui.core.errors import UserError
from merger_gui.core.output_folders import replace_refusal
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.synthetic import DonorShape
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.validation import validate_recipe
from merger_gui.engine.run import MergeDone, MergeOptions, StageFinished, run_merge

pytestmark = pytest.mark.timeout(60)

SHAPE = DonorShape(num_layers=4)
SIMPLE = """
merge_method: passthrough
dtype: float16
slices:
- sources: [{model: a, layer_range: [0, 2]}]
- sources: [{model: b, layer_range: [1, 3]}]
"""
TWO_STAGES = """
name: {name}
merge_method: passthrough
slices:
- sources: [{{model: a, layer_range: [0, 3]}}]
- sources: [{{model: b, layer_range: [2, 4]}}]
---
name: final
merge_method: passthrough
slices:
- sources: [{{model: {name}, layer_range: [0, 4]}}]
"""


@pytest.fixture
def donors(make_donor):
    return {"a": make_donor("a", SHAPE, seed=1), "b": make_donor("b", SHAPE, seed=2)}


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: t for file in sorted(folder.glob("*.safetensors")) for name, t in load_file(file).items()}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def merge(text: str, donors: dict[str, Path], out: Path, **options) -> list:
    infos = {name: inspect_folder(path) for name, path in donors.items()}
    return list(run_merge(load_recipe_text(text), infos, out, MergeOptions(**options)))


def write_recipe(folder: Path, text: str = SIMPLE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(text)
    return recipe


def cli(*argv: object) -> int:
    return cli_main([str(a) for a in argv])


# --------------------------------------------------------------------------- the final output


def test_overwrite_into_the_recipes_own_folder_deletes_nothing(donors, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    recipe = write_recipe(work)
    (work / "notes.txt").write_text("my notes")
    before = snapshot(work)
    monkeypatch.chdir(work)
    code = cli("merge", "recipe.yaml", ".", "--overwrite", "--donor", f"a={donors['a']}", "--donor",
               f"b={donors['b']}")
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "not replaced: it holds the recipe being merged;" in err
    assert "Traceback" not in err and snapshot(work) == before and recipe.exists()


@pytest.mark.parametrize("place", ["cwd", "home", "recipe_parent"])
def test_protected_folders_are_never_replaced(donors, tmp_path, monkeypatch, place):
    folder = tmp_path / "protected"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")  # looks like a model folder all the same
    recipe = write_recipe(tmp_path / "recipes")
    if place == "cwd":
        (folder / "inside").mkdir()
        monkeypatch.chdir(folder / "inside")
    elif place == "home":
        monkeypatch.setenv("HOME", str(folder))
    else:
        recipe = write_recipe(folder / "sub")
    before = snapshot(folder)
    with pytest.raises(UserError, match="not replaced"):
        merge(SIMPLE, donors, folder, overwrite=True, recipe_path=recipe)
    assert snapshot(folder) == before


@pytest.mark.parametrize("intruder", ["notes.txt", "photos/", "link"])
def test_a_folder_holding_anything_but_a_model_is_not_replaced(donors, tmp_path, intruder):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    if intruder == "photos/":
        (out / "photos").mkdir()
        (out / "photos" / "cat.jpg").write_bytes(b"meow")
    elif intruder == "link":
        (out / "link").symlink_to(tmp_path)
    else:
        (out / intruder).write_text("mine")
    before = snapshot(out)
    with pytest.raises(UserError, match=f"holds {intruder.rstrip('/')}"):
        merge(SIMPLE, donors, out, overwrite=True)
    assert snapshot(out) == before


def test_a_folder_without_weights_is_not_replaced(donors, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a model folder"):
        merge(SIMPLE, donors, out, overwrite=True)
    assert (out / "config.json").read_text() == "{}"


def test_a_file_is_not_replaced_by_a_folder(donors, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(UserError, match="is a file"):
        merge(SIMPLE, donors, out, overwrite=True)
    assert out.read_text() == "a file"


@pytest.mark.parametrize("content", ["empty", "earlier merge"])
def test_an_empty_folder_or_an_earlier_merge_is_replaced(donors, tmp_path, content):
    out = tmp_path / "out"
    if content == "empty":
        out.mkdir()
    else:
        merge(SIMPLE, donors, out)
        (out / "extra-notes.md").unlink(missing_ok=True)
    events = merge(SIMPLE, donors, out, overwrite=True)
    assert isinstance(events[-1], MergeDone)
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))


def test_without_overwrite_an_existing_folder_is_kept(donors, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="already exists"):
        merge(SIMPLE, donors, out)


def test_replace_refusal_names_the_donor_it_would_delete(tmp_path):
    donor = tmp_path / "models" / "a"
    donor.mkdir(parents=True)
    assert "holds donor a" in replace_refusal(tmp_path / "models", donor_folders=[("a", donor)])
    assert "is the folder of donor a" in replace_refusal(donor, donor_folders=[("a", donor)])
    assert "inside the folder of donor a" in replace_refusal(donor / "x", donor_folders=[("a", donor)])


# --------------------------------------------------------------------------- intermediate stages


@pytest.mark.parametrize("name", [".", "..", "x" * 300])
def test_stage_names_that_make_no_folder_are_errors(name):
    recipe = load_recipe_text(TWO_STAGES.format(name=f"'{name}'"))
    findings = [f for f in validate_recipe(recipe, {}) if f.code == "stage-folder-name"]
    assert findings and findings[0].is_error


def test_stage_names_that_share_a_folder_are_errors():
    text = TWO_STAGES.format(name="a/b") + """---
name: a_b
merge_method: passthrough
slices:
- sources: [{model: b, layer_range: [0, 4]}]
"""
    findings = [f for f in validate_recipe(load_recipe_text(text), {}) if f.code == "stage-folder-name"]
    assert len(findings) == 1 and "'a_b'" in findings[0].message and findings[0].is_error
    upper = text.replace("name: a_b", "name: A_B")
    assert [f for f in validate_recipe(load_recipe_text(upper), {}) if f.code == "stage-folder-name"]


def test_dot_stage_does_not_empty_the_intermediate_folder(donors, tmp_path):
    inter = tmp_path / "inter"
    inter.mkdir()
    (inter / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not valid"):
        merge(TWO_STAGES.format(name="'.'"), donors, tmp_path / "out", intermediate_dir=inter, overwrite=True)
    assert (inter / "keep.txt").read_text() == "mine"


def test_an_existing_folder_that_is_not_ours_is_kept_without_overwrite(donors, tmp_path):
    inter = tmp_path / "inter"
    (inter / "first").mkdir(parents=True)
    (inter / "first" / "config.json").write_text("{}")
    (inter / "first" / "model.safetensors").write_bytes(b"someone else's model")
    before = snapshot(inter)
    with pytest.raises(UserError, match="not written by merger_gui"):
        merge(TWO_STAGES.format(name="first"), donors, tmp_path / "out", intermediate_dir=inter)
    assert snapshot(inter) == before and not (tmp_path / "out").exists()
    # --overwrite replaces a model folder, but never one holding other things
    (inter / "first" / "diary.txt").write_text("mine")
    with pytest.raises(UserError, match="holds diary.txt"):
        merge(TWO_STAGES.format(name="first"), donors, tmp_path / "out", intermediate_dir=inter, overwrite=True)
    (inter / "first" / "diary.txt").unlink()
    events = merge(TWO_STAGES.format(name="first"), donors, tmp_path / "out", intermediate_dir=inter, overwrite=True)
    assert isinstance(events[-1], MergeDone)


@pytest.mark.parametrize("where", ["is", "inside"])
def test_a_stage_folder_is_never_a_donor_folder(make_donor, tmp_path, tmp_path_factory, where):
    donors = {"a": make_donor("a", SHAPE, seed=1), "b": make_donor("shared", SHAPE, seed=2)}
    inter = tmp_path if where == "is" else donors["b"]
    before = snapshot(donors["b"])
    with pytest.raises(UserError, match="overlaps the folder of donor b"):
        merge(TWO_STAGES.format(name="shared"), donors, tmp_path_factory.mktemp("elsewhere") / "out",
              intermediate_dir=inter, overwrite=True)
    assert snapshot(donors["b"]) == before


@pytest.mark.parametrize("edit", ["mtime changed", "mtime restored", "replaced, mtime restored"])
def test_an_intermediate_stage_edited_in_place_is_merged_again(donors, tmp_path, edit):
    out, inter = tmp_path / "out", tmp_path / "inter"
    text = TWO_STAGES.format(name="first")
    merge(text, donors, out, intermediate_dir=inter)
    expected = load_folder(out)
    shard = inter / "first" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-64:] = bytes(64)  # same size, other weights
    stat = shard.stat()
    if edit.startswith("replaced"):
        (inter / "first" / "copy").write_bytes(bytes(data))
        os.replace(inter / "first" / "copy", shard)
    else:
        with open(shard, "r+b") as file:  # in place: the same inode
            file.write(bytes(data))
    shift = 1_000_000 if edit == "mtime changed" else 0
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + shift))
    assert shard.stat().st_mtime_ns == stat.st_mtime_ns + shift and shard.stat().st_size == stat.st_size
    events = merge(text, donors, out, intermediate_dir=inter, overwrite=True)
    assert [e.reused for e in events if isinstance(e, StageFinished)] == [False, False]
    merged = load_folder(out)
    assert all(torch.equal(merged[name], tensor) for name, tensor in expected.items())
    again = merge(text, donors, out, intermediate_dir=inter, overwrite=True)
    assert [e.reused for e in again if isinstance(e, StageFinished)] == [True, False]
