"""Read back a merged model folder in tests: all its weights and its config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def folder_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
