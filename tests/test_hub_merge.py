"""Hub donors end to end: huggingface_hub downloads from a fake Hub on 127.0.0.1 into an empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import file_download
from safetensors.torch import load_file

from hub_server import FakeHub, go_online, use_cache
from merger_gui.cli import main as cli_main
from merger_gui.core.errors import DonorError
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
