"""Lint, as CI runs it: ruff, mypy and the import-linter contracts over the tree report nothing.

The tools are pinned in the ``test`` extra; where one is not installed its test is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)  # mypy without its cache takes a while


def _tool(name: str) -> str:
    """The tool installed beside this Python (the test venv), else on PATH; skips when absent."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _passes(*command: str) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"


def test_ruff_finds_nothing():
    _passes(_tool("ruff"), "check", "merger_gui", "tests", "benchmarks", "docs", "packaging")


@pytest.mark.slow
def test_mypy_finds_nothing():
    _passes(_tool("mypy"))  # files and options from pyproject.toml


def test_import_contracts_are_kept():
    _passes(_tool("lint-imports"))
