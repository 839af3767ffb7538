"""Shared fixtures: small random donors built on disk, the seed recipes, Qt isolation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from merger_gui.core.synthetic import DonorShape, write_donor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_RECIPES = REPO_ROOT / "resources" / "recipes"


@pytest.fixture
def make_donor(tmp_path):
    """Factory: ``make_donor("a", seed=1, shape=DonorShape(...), **write_donor_kwargs)`` → folder."""

    def factory(name: str, shape: DonorShape = DonorShape(), **kwargs) -> Path:
        return write_donor(tmp_path / name, shape, **kwargs)

    return factory


@pytest.fixture
def seed_recipe_path():
    """Path of a shipped seed recipe by file name (``rose-20b.yaml``, ``nyxene-11b.yaml``)."""
    return lambda name: SEED_RECIPES / name
