"""What we know about a donor model without reading its weights."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .dtypes import BY_CODE

LAYER_PATTERN = re.compile(r"^(?P<prefix>.*?\.(?:layers|h|blocks))\.(?P<index>\d+)\.(?P<suffix>.+)$")

# Most layers a model may have: far above any real one (~200), low enough that per-layer
# lists (plan, estimate, the layer view) stay cheap.
MAX_LAYERS = 10_000

# Non-parameter buffers some checkpoints carry; never merged, never counted.
BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)


def layer_index(tensor_name: str) -> int | None:
    """The layer number in a tensor name (``model.layers.7.mlp…`` → 7), else None."""
    match = LAYER_PATTERN.match(tensor_name)
    return int(match["index"]) if match else None


def with_layer_index(tensor_name: str, index: int) -> str:
    """The same tensor name with its layer number replaced by ``index``."""
    match = LAYER_PATTERN.match(tensor_name)
    if match is None:
        raise ValueError(f"{tensor_name!r} is not a layer tensor")
    return f"{match['prefix']}.{index}.{match['suffix']}"


def is_buffer(tensor_name: str) -> bool:
    return tensor_name.endswith(BUFFER_SUFFIXES)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's name, shape and storage dtype (a safetensors code such as ``BF16``).

    The one description of a tensor: a donor's, a located source's (engine reader) and an
    output's as the writer lays it out; ``file`` is the donor weight file it is in, if known.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data: the one byte count of a tensor in the app."""
        return self.numel * BY_CODE[self.dtype].size


@dataclass(frozen=True)
class DonorInfo:
    """Architecture facts and the tensor list of one donor (folder, Hub repo, profile or stage)."""

    ref: str
    kind: str  # "folder" | "hub" | "profile" | "stage"
    architecture: str
    family: str  # llama, qwen2, gemma, gemma2, phi3, mixtral, … or "unknown"
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str  # torch-style name of the stored dtype, e.g. "bfloat16"
    tensors: tuple[TensorInfo, ...]
    path: str | None = None
    weight_format: str | None = None  # "safetensors" | "bin" | None (profile)
    sliding_window: int | None = None
    sliding_window_layers: tuple[bool, ...] | None = None  # per layer; None = no pattern known
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    warnings: tuple[str, ...] = ()
    download_bytes: int = 0  # weight bytes still to fetch for a Hub donor not in the cache
    adapter: str | None = None  # MODEL+LORA: the PEFT LoRA adapter (folder or Hub repo id) applied to the weights
    file_sizes: tuple[tuple[str, int], ...] = ()  # Hub donors: (weight file, bytes) of the repo

    @cached_property
    def tensor_map(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo | None:
        return self.tensor_map.get(name)

    @cached_property
    def _by_layer(self) -> dict[int | None, tuple[TensorInfo, ...]]:
        groups: dict[int | None, list[TensorInfo]] = {}
        for info in self.tensors:
            if not is_buffer(info.name):
                groups.setdefault(layer_index(info.name), []).append(info)
        return {k: tuple(v) for k, v in groups.items()}

    def layer_tensors(self, index: int) -> tuple[TensorInfo, ...]:
        """Parameter tensors of layer ``index`` (buffers such as ``inv_freq`` excluded)."""
        return self._by_layer.get(index, ())

    def non_layer_tensors(self) -> tuple[TensorInfo, ...]:
        """Embeddings, final norm, lm_head…: parameters outside the layer stack."""
        return self._by_layer.get(None, ())

    @property
    def param_count(self) -> int:
        return sum(t.numel for t in self.tensors if not is_buffer(t.name))

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not is_buffer(t.name))

    @property
    def has_lm_head(self) -> bool:
        return any(t.name.endswith("lm_head.weight") for t in self.tensors)

    @property
    def display_name(self) -> str:
        return self.ref.removeprefix("profile:").rstrip("/").split("/")[-1]
