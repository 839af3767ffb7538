"""Hub donors: inspection from a pre-filled local cache and from a fake Hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import constants

from hub_server import SHA, FakeHub, go_online, use_cache

from merger_gui.core.errors import DonorError
from merger_gui.core.hub import header_cache_dir, inspect_repo
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.resolve import resolve_donor
from merger_gui.core.synthetic import DonorShape

REPO = "org/tiny"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache in tmp_path, offline by default."""
    return use_cache(monkeypatch, tmp_path / "hf" / "hub")


def fill_cache(cache: Path, folder: Path, files: list[str], repo: str = REPO, sha: str = SHA) -> Path:
    """Copy ``files`` of a donor folder into the cache layout as huggingface_hub writes it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(sha)
    for name in files:
        data = (folder / name).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def test_offline_fully_cached_repo(hub_cache, make_donor):
    folder = make_donor("tiny", DonorShape(family="qwen2"), shards=2, dtype="bfloat16")
    fill_cache(hub_cache, folder, ["config.json", "model.safetensors.index.json",
                                   "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    info = inspect_repo(REPO)
    local = inspect_folder(folder)
    assert info.kind == "hub" and info.ref == REPO and info.family == "qwen2"
    assert info.tensors == local.tensors and info.download_bytes == 0
    assert info.path.endswith(SHA)
    assert inspect_repo(REPO, SHA).tensors == local.tensors


def test_offline_missing_shard_without_remembered_header(hub_cache, make_donor):
    folder = make_donor("tiny", shards=2)
    fill_cache(hub_cache, folder, ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"])
    with pytest.raises(DonorError, match="model-00002-of-00002.safetensors is not cached"):
        inspect_repo(REPO)


def test_offline_unknown_repo_and_revision(hub_cache, make_donor):
    with pytest.raises(DonorError, match="org/absent is not in the local Hugging Face cache"):
        inspect_repo("org/absent")
    fill_cache(hub_cache, make_donor("tiny"), ["config.json", "model.safetensors"])
    with pytest.raises(DonorError, match="not in the local"):
        inspect_repo(REPO, "v2")
    with pytest.raises(DonorError, match=r"^Hub repo org/absent@v1 is not in the local Hugging Face cache"):
        resolve_donor("org/absent@v1")


def test_offline_hostile_cached_header(hub_cache, make_donor):
    folder = make_donor("tiny")
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    fill_cache(hub_cache, folder, ["config.json", "model.safetensors"])
    with pytest.raises(DonorError, match="exceeds"):
        inspect_repo(REPO)


@pytest.fixture
def online(hub_cache, monkeypatch):
    """Go online against a FakeHub serving the given folder as ``org/tiny``."""
    return lambda folder: go_online(monkeypatch, FakeHub({REPO: folder}))


def test_online_metadata_only_then_offline(online, hub_cache, make_donor, monkeypatch):
    folder = make_donor("tiny", DonorShape(family="gemma", tie_word_embeddings=True), shards=2)
    with online(folder) as hub:
        info = inspect_repo(REPO)
        weights = [r for r in hub.requests if r[1].endswith(".safetensors") and r[0] == "GET"]
    local = inspect_folder(folder)
    assert info.tensors == local.tensors and info.family == "gemma" and not info.has_lm_head
    shard_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert info.download_bytes == shard_bytes
    assert weights and all(r[2] and r[2].startswith("bytes=") for r in weights)  # headers only, ranged
    assert not any(p.name.endswith(".safetensors") for p in hub_cache.rglob("*"))  # no weights downloaded
    assert any(header_cache_dir().rglob(f"{SHA}.json"))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = inspect_repo(REPO)  # config.json cached + remembered headers
    assert again.tensors == local.tensors and again.download_bytes == shard_bytes


def test_online_partially_cached_download_bytes(online, hub_cache, make_donor):
    folder = make_donor("tiny", shards=2)
    fill_cache(hub_cache, folder, ["model-00001-of-00002.safetensors"])
    with online(folder):
        info = inspect_repo(REPO, "main")
    assert info.ref == f"{REPO}@main"
    assert info.download_bytes == (folder / "model-00002-of-00002.safetensors").stat().st_size


def test_online_unknown_repo_and_revision(online, make_donor):
    with online(make_donor("tiny")):
        with pytest.raises(DonorError, match="org/other not found"):
            inspect_repo("org/other")
        with pytest.raises(DonorError, match="has no revision 'v9'"):
            inspect_repo(REPO, "v9")


def test_online_bin_only_repo(online, make_donor):
    folder = make_donor("tiny", weight_format="bin")
    with online(folder):
        with pytest.raises(DonorError, match="has no model.safetensors"):
            inspect_repo(REPO)


def test_online_unreachable(online, make_donor):
    hub = online(make_donor("tiny"))
    hub.server.server_close()  # never started: connections are refused
    with pytest.raises(DonorError, match="cannot reach the Hub for org/tiny"):
        inspect_repo(REPO)
