"""Hub donors end to end: huggingface_hub downloads from a fake Hub on 127.0.0.1 into an empty cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import file_download
from safetensors.torch import load_file, save_file

from hub_server import FakeHub, go_online, use_cache
from merger_gui.cli import main as cli_main
from merger_gui.core.donor import layer_index
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.synthetic import DonorShape, tokenizer_files
from merger_gui.engine import run as run_module
from merger_gui.core.recipe_yaml import load_recipe_text
from merger_gui.core.resolve import resolve_recipe_donors
from merger_gui.engine.run import DownloadProgress, MergeDone, StageStarted, run_merge

RECIPE = """
merge_method: passthrough
base_model: org/donor-a
slices:
- sources: [{model: org/donor-a, layer_range: [0, 3]}]
- sources: [{model: org/donor-b, layer_range: [1, 4]}]
"""
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")
MERGE_FILES = {"config.json", "model.safetensors.index.json", *TOKENIZER}
JUNK = ("optimizer.pt", "training_args.bin", "README.md")


@pytest.fixture
def repos(make_donor) -> dict[str, Path]:
    """Two random donors (one sharded) with files a merge must not download."""
    folders = {"org/donor-a": make_donor("donor-a", seed=1, shards=2), "org/donor-b": make_donor("donor-b", seed=2)}
    for folder in folders.values():
        for name in JUNK:
            (folder / name).write_bytes(b"not needed " * 1000)
    return folders


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    return use_cache(monkeypatch, tmp_path / "hf" / "hub")


@pytest.fixture
def hub(repos, cache, monkeypatch):
    with FakeHub(repos) as server:
        yield go_online(monkeypatch, server)


def weights(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    loaded: dict[str, torch.Tensor] = {}
    for file in folder.glob("*.safetensors"):
        loaded.update(load_file(file))
    return loaded


def weight_downloads(hub: FakeHub) -> list[str]:
    return [p for p in hub.full_downloads() if p.endswith(".safetensors")]


def test_merge_from_hub_equals_local_merge_then_uses_cache(hub, repos, cache, tmp_path):
    recipe = load_recipe_text(RECIPE)
    donors, errors = resolve_recipe_donors(recipe, {})
    assert not errors
    assert all(d.kind == "hub" and d.download_bytes > 0 for d in donors.values())
    assert weight_downloads(hub) == []  # inspection reads headers only

    events = list(run_merge(recipe, donors, tmp_path / "out"))
    assert isinstance(events[-1], MergeDone)
    kinds = [type(e) for e in events]
    assert kinds.index(StageStarted) > max(i for i, k in enumerate(kinds) if k is DownloadProgress)
    finished = {f"{e.model}/{e.file}" for e in events if isinstance(e, DownloadProgress) and e.downloaded == e.total}
    expected_weights = {f"{repo}/{name}" for repo, folder in repos.items() for name in weights(folder)}
    assert expected_weights <= finished
    for event in events:
        if isinstance(event, DownloadProgress):
            assert event.total == (repos[event.model] / event.file).stat().st_size
    fetched = hub.full_downloads()
    assert set(weight_downloads(hub)) == expected_weights and len(weight_downloads(hub)) == len(expected_weights)
    assert {p.split("/", 2)[2] for p in fetched} <= MERGE_FILES | {n for f in repos.values() for n in weights(f)}
    assert not any(p.endswith(JUNK) for p in hub.full_downloads())

    local, errors = resolve_recipe_donors(recipe, {name: str(folder) for name, folder in repos.items()})
    assert not errors
    list(run_merge(recipe, local, tmp_path / "local"))
    merged, reference = tensors(tmp_path / "out"), tensors(tmp_path / "local")
    assert merged.keys() == reference.keys() and len(merged) > 20
    assert all(torch.equal(merged[name], reference[name]) for name in merged)
    for name in ("config.json", *TOKENIZER):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()

    hub.requests.clear()
    again, errors = resolve_recipe_donors(recipe, {})
    assert not errors and all(d.download_bytes == 0 for d in again.values())
    events = list(run_merge(recipe, again, tmp_path / "again"))
    assert not any(isinstance(e, DownloadProgress) for e in events)
    assert weight_downloads(hub) == [] and isinstance(events[-1], MergeDone)
    assert tensors(tmp_path / "again").keys() == merged.keys()


def test_dropped_connection_is_one_line_and_writes_nothing(repos, cache, tmp_path, monkeypatch):
    # huggingface_hub resumes a broken download after a 1 s pause, five times: skip the pauses.
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda _: None, time=time.time))
    shard = weights(repos["org/donor-a"])[0]
    recipe = load_recipe_text(RECIPE)
    with FakeHub(repos, drop=frozenset({shard})) as server:
        go_online(monkeypatch, server)
        donors, errors = resolve_recipe_donors(recipe, {})
        assert not errors
        with pytest.raises(DonorError) as caught:
            list(run_merge(recipe, donors, tmp_path / "out"))
    message = str(caught.value)
    assert message.startswith(f"donor org/donor-a: cannot download {shard} from org/donor-a")
    assert "\n" not in message
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_estimate_reports_download_bytes(hub, repos, tmp_path, capsys):
    assert cli_main(["estimate", "org/donor-a", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    folder = repos["org/donor-a"]
    assert single["download_bytes"] == sum((folder / n).stat().st_size for n in weights(folder))
    assert cli_main(["estimate", "org/donor-b"]) == 0
    assert "download (weights not in the Hub cache)" in capsys.readouterr().out

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    assert cli_main(["estimate", str(recipe), "--json"]) == 0
    merge = json.loads(capsys.readouterr().out)["merge"]
    assert merge["download_bytes"] == sum((f / n).stat().st_size for f in repos.values() for n in weights(f))
    assert weight_downloads(hub) == []


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "merger_gui", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_cli_merge_downloads_with_progress(repos, cache, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    with FakeHub(repos) as server:
        result = run_cli("merge", str(recipe), str(tmp_path / "out"), env=server.env(cache))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for repo, folder in repos.items():
        for name in weights(folder):
            assert f"downloaded {repo}/{name}" in result.stderr
    assert (tmp_path / "out" / "config.json").is_file() and "merged" in result.stdout
    assert not any(p.endswith(JUNK) for p in server.full_downloads())


def test_cli_unknown_repo_is_one_line(repos, cache, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("org/donor-b", "org/absent"))
    with FakeHub(repos) as server:
        result = run_cli("merge", str(recipe), str(tmp_path / "out"), env=server.env(cache))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "org/absent not found" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


LAYERED = """
merge_method: passthrough
base_model: org/layered
slices:
- sources: [{model: org/layered, layer_range: [0, 4]}]
- sources: [{model: org/donor-b, layer_range: [0, 1]}]
"""
LATER = """
merge_method: passthrough
base_model: org/layered
slices:
- sources: [{model: org/layered, layer_range: [2, 6]}]
"""
SHARDS = tuple(f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3))


def shard_by_layer(folder: Path) -> Path:
    """Store a one-file donor of 6 layers as 3 shards: embeddings and layers 0-1, layers 2-3 with the
    final norm and lm_head, layers 4-5 (the synthetic writer spreads every layer over every shard)."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in SHARDS}
    for name, tensor in tensors.items():
        layer = layer_index(name)
        shard = ("embed" not in name) if layer is None else layer // 2
        groups[SHARDS[shard]][name] = tensor
    for shard, group in groups.items():
        save_file(group, folder / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, group in groups.items() for name in group}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture
def layered(make_donor) -> dict[str, Path]:
    """``org/layered``: 6 layers in 3 shards split by layer; ``org/donor-b``: a plain 4-layer donor."""
    folder = shard_by_layer(make_donor("layered", DonorShape(num_layers=6), seed=3))
    return {"org/layered": folder, "org/donor-b": make_donor("donor-b", seed=2)}


@pytest.fixture
def layered_hub(layered, cache, monkeypatch):
    with FakeHub(layered) as server:
        yield go_online(monkeypatch, server)


def merge_locally(text: str, repos: dict[str, Path], out: Path) -> dict[str, torch.Tensor]:
    donors, errors = resolve_recipe_donors(load_recipe_text(text), {name: str(f) for name, f in repos.items()})
    assert not errors
    list(run_merge(load_recipe_text(text), donors, out))
    return tensors(out)


def requested_files(hub: FakeHub, repo: str) -> list[str]:
    """Files of ``repo`` the Hub was asked for (any method, ranged or not)."""
    prefix = f"/{repo}/resolve/"
    return [path.split("/", 5)[5] for _, path, _ in hub.requests if path.startswith(prefix)]


def test_merge_fetches_only_the_shards_it_reads(layered_hub, layered, tmp_path):
    recipe = load_recipe_text(LAYERED)
    donors, errors = resolve_recipe_donors(recipe, {})
    assert not errors
    layered_hub.requests.clear()  # inspection reads every shard's header (ranged)

    events = list(run_merge(recipe, donors, tmp_path / "out"))
    assert isinstance(events[-1], MergeDone)
    downloaded = {(e.model, e.file) for e in events if isinstance(e, DownloadProgress) and e.file.endswith("ors")}
    assert downloaded == {("org/layered", SHARDS[0]), ("org/layered", SHARDS[1]),
                          ("org/donor-b", "model.safetensors")}
    assert SHARDS[2] not in requested_files(layered_hub, "org/layered")
    assert not any(name.startswith("tokenizer") for name in requested_files(layered_hub, "org/donor-b"))
    merged = tensors(tmp_path / "out")
    reference = merge_locally(LAYERED, layered, tmp_path / "local")
    assert merged.keys() == reference.keys() and "model.layers.3.mlp.up_proj.weight" in merged
    assert all(torch.equal(merged[name], reference[name]) for name in merged)
    for name in ("config.json", *TOKENIZER):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()

    again, errors = resolve_recipe_donors(recipe, {})
    assert not errors and again["org/layered"].download_bytes == (layered["org/layered"] / SHARDS[2]).stat().st_size
    layered_hub.requests.clear()
    events = list(run_merge(recipe, again, tmp_path / "again"))
    assert not any(isinstance(e, DownloadProgress) for e in events)  # all it reads is cached
    assert weight_downloads(layered_hub) == []


def test_disk_space_check_counts_only_the_shards_read(layered_hub, layered, cache, tmp_path, monkeypatch):
    recipe = load_recipe_text(LAYERED)
    donors, errors = resolve_recipe_donors(recipe, {})
    assert not errors
    needed = sum((layered["org/layered"] / n).stat().st_size for n in SHARDS[:2]) \
        + (layered["org/donor-b"] / "model.safetensors").stat().st_size
    assert sum(d.download_bytes for d in donors.values()) > needed  # the whole repos are more
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        free = room if Path(path).is_relative_to(cache) else usage.free
        return usage._replace(free=free)

    monkeypatch.setattr(run_module.shutil, "disk_usage", disk_usage)
    room = needed - 1
    with pytest.raises(UserError, match="not enough disk space to download donors into"):
        list(run_merge(recipe, donors, tmp_path / "refused"))
    assert weight_downloads(layered_hub) == []
    room = needed
    assert isinstance(list(run_merge(recipe, donors, tmp_path / "out"))[-1], MergeDone)


def test_later_recipe_fetches_only_the_missing_shard(layered_hub, layered, tmp_path):
    donors, errors = resolve_recipe_donors(load_recipe_text(LAYERED), {})
    assert not errors
    list(run_merge(load_recipe_text(LAYERED), donors, tmp_path / "first"))
    layered_hub.requests.clear()

    recipe = load_recipe_text(LATER)
    events = list(run_merge(recipe, {"org/layered": donors["org/layered"]}, tmp_path / "out"))
    assert isinstance(events[-1], MergeDone)
    assert weight_downloads(layered_hub) == [f"org/layered/{SHARDS[2]}"]
    assert {e.file for e in events if isinstance(e, DownloadProgress) and e.file.endswith("ors")} == {SHARDS[2]}
    merged = tensors(tmp_path / "out")
    reference = merge_locally(LATER, layered, tmp_path / "local")
    assert merged.keys() == reference.keys() and "model.layers.3.mlp.up_proj.weight" in merged
    assert all(torch.equal(merged[name], reference[name]) for name in merged)


PADDED = """
merge_method: linear
base_model: org/padded
tokenizer_source: base
models:
- {model: org/padded, parameters: {weight: 0.5}}
- {model: org/donor-b, parameters: {weight: 0.5}}
dtype: float32
"""


def test_vocabulary_is_planned_from_the_fetched_tokenizers(make_donor, cache, tmp_path, monkeypatch):
    padded = make_donor("padded", seed=4)  # 96 embedding rows, as config.json says, but 90 tokens
    for name, content in tokenizer_files(90).items():
        (padded / name).write_text(json.dumps(content))
    repos = {"org/padded": padded, "org/donor-b": make_donor("donor-b", seed=2)}
    recipe = load_recipe_text(PADDED)
    with FakeHub(repos) as server:
        go_online(monkeypatch, server)
        donors, errors = resolve_recipe_donors(recipe, {})
        assert not errors
        events = list(run_merge(recipe, donors, tmp_path / "out"))
    assert isinstance(events[-1], MergeDone)
    merged = tensors(tmp_path / "out")
    reference = merge_locally(PADDED, repos, tmp_path / "local")
    assert merged["model.embed_tokens.weight"].shape[0] == 90
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[name], reference[name]) for name in merged)
