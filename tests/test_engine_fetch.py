"""Hub donors not in the cache: fetched (weights, config, tokenizer only) with progress events."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger_gui.core.errors import DonorError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.engine import fetch as fetch_module
from merger_gui.engine.run import DownloadProgress, MergeCancelled, MergeDone, run_merge

RECIPE = """
merge_method: passthrough
base_model: org/remote
slices:
- sources: [{model: org/remote, layer_range: [0, 3]}]
- sources: [{model: local, layer_range: [1, 2]}]
"""


@pytest.fixture
def hub(make_donor, tmp_path, monkeypatch):
    """A fake Hub: ``org/remote`` served from a local folder, chunk by chunk; records requests."""
    repo = make_donor("repo", seed=5, shards=2)
    (repo / "optimizer.pt").write_bytes(b"not needed")
    snapshot = tmp_path / "cache" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    requested: list[str] = []

    def fake_download(repo_id, filename, *, revision=None, tqdm_class=None):
        assert repo_id == "org/remote"
        requested.append(filename)
        source = repo / filename
        if not source.is_file():
            raise fetch_module.EntryNotFoundError(f"{filename} not found")
        data = source.read_bytes()
        bar = tqdm_class(total=len(data), initial=0, unit="B")
        for start in range(0, len(data), 4096):
            bar.update(len(data[start:start + 4096]))
        bar.close()
        shutil.copyfile(source, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(fetch_module, "hf_hub_download", fake_download)
    size = sum(p.stat().st_size for p in repo.glob("*.safetensors"))
    remote = replace(inspect_folder(repo), ref="org/remote", kind="hub", path=None, download_bytes=size)
    return remote, repo, requested


def test_fetches_only_what_the_merge_needs(hub, make_donor, tmp_path):
    remote, repo, requested = hub
    donors = {"org/remote": remote, "local": inspect_folder(make_donor("local", seed=6))}
    out = tmp_path / "out"
    events = list(run_merge(load_recipe_text(RECIPE), donors, out))
    downloads = [e for e in events if isinstance(e, DownloadProgress)]
    assert {e.file for e in downloads} >= {"config.json", "model-00001-of-00002.safetensors"}
    last = [e for e in downloads if e.file == "model-00002-of-00002.safetensors"][-1]
    assert last.downloaded == last.total == (repo / last.file).stat().st_size
    assert "optimizer.pt" not in requested and "model.safetensors.index.json" in requested
    assert isinstance(events[-1], MergeDone)
    merged = load_file(out / "model.safetensors")
    source = {}
    for file in repo.glob("*.safetensors"):
        source.update(load_file(file))
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"], source["model.layers.2.mlp.up_proj.weight"])
    assert (out / "tokenizer.json").is_file()


def test_cancel_during_download(hub, make_donor, tmp_path):
    remote, _, _ = hub
    donors = {"org/remote": remote, "local": inspect_folder(make_donor("local", seed=6))}
    cancel = threading.Event()
    out = tmp_path / "out"
    with pytest.raises(MergeCancelled):
        for event in run_merge(load_recipe_text(RECIPE), donors, out, cancel=cancel):
            if isinstance(event, DownloadProgress) and event.file.endswith(".safetensors"):
                cancel.set()
    assert not out.exists()


def test_download_error_names_the_donor(hub, make_donor, tmp_path, monkeypatch):
    remote, _, _ = hub

    def offline(*_args, **_kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(fetch_module, "hf_hub_download", offline)
    donors = {"org/remote": remote, "local": inspect_folder(make_donor("local", seed=6))}
    with pytest.raises(DonorError, match="donor org/remote: cannot download config.json from org/remote"):
        list(run_merge(load_recipe_text(RECIPE), donors, tmp_path / "out"))
    assert not Path(tmp_path / "out").exists()
