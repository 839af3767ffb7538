"""Inspect a donor folder: config facts, architecture family and the tensor list, never weights."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .donor import MAX_LAYERS, DonorInfo, TensorInfo, is_buffer, layer_index
from .dtypes import known_dtype_code, torch_name
from .errors import DonorError
from .safe_files import CONFIG_LIMIT, INDEX_LIMIT, donor_file, is_present, read_json_file
from .safetensors_header import MAX_TENSORS, read_safetensors_header

# Files a merge reads or copies besides config.json and the weights.
METADATA_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "generation_config.json", "chat_template.jinja", "chat_template.json",
)
# model_type → family; Llama-style decoders share the llama tensor layout.
FAMILIES = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma": "gemma",
    "gemma2": "gemma2", "phi3": "phi3", "mixtral": "mixtral",
}
# transformers' config-class defaults where config.json may omit the key.
TIED_BY_DEFAULT = {"gemma", "gemma2"}
DEFAULT_SLIDING_WINDOW = {"mistral": 4096, "gemma2": 4096, "qwen2": 4096}
MAX_DIMENSION = 2**31 - 1  # bound of config.json sizes other than the layer count
MAX_DONOR_TENSORS = 4 * MAX_TENSORS
# config.json key → older / GPT-style aliases accepted for unknown families.
KEY_ALIASES = {
    "num_hidden_layers": ("n_layer", "num_layers"),
    "hidden_size": ("n_embd", "d_model"),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("n_inner", "ffn_dim"),
}


def _read_bin(path: Path) -> dict[str, TensorInfo]:
    """Tensors of a ``.bin`` checkpoint (its reader is imported on first use: most donors are safetensors)."""
    from .torch_pickle import read_torch_checkpoint

    donor_file(path)  # a regular file, not a link out of the folder
    return read_torch_checkpoint(path)


WEIGHT_FORMATS = (
    ("safetensors", "model.safetensors.index.json", "*.safetensors", read_safetensors_header),
    ("bin", "pytorch_model.bin.index.json", "*.bin", _read_bin),
)


def inspect_folder(path: str | Path) -> DonorInfo:
    """Inspect a local model folder (``config.json`` plus safetensors or ``.bin`` weights).

    Raises:
        DonorError: the folder, its config or its weights are missing or unreadable.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DonorError(f"donor folder {path} {what}")
    config = read_config(folder / "config.json")
    check_metadata_files(folder)
    weight_format, tensors = read_folder_tensors(folder)
    return donor_from_config(str(path), "folder", config, natural_order(tensors), path=str(folder),
                             weight_format=weight_format)


def check_metadata_files(folder: Path) -> None:
    """Refuse a folder whose tokenizer or generation files are special files or links out of it.

    A merge reads or copies them only at its end; checked here, validate reports them first.
    """
    for name in METADATA_FILES:
        if is_present(folder / name):
            donor_file(folder / name, folder)


def natural_order(tensors: Iterable[TensorInfo]) -> tuple[TensorInfo, ...]:
    """Tensors sorted by name with numbers compared as numbers (``layers.2`` before ``layers.10``)."""
    return tuple(sorted(tensors, key=lambda t: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", t.name)]))


def read_config(file: Path) -> dict[str, Any]:
    """The parsed ``config.json``; DonorError when missing, unsafe or not a JSON object."""
    if not is_present(file):
        raise DonorError(f"{file.parent} has no config.json")
    config = read_json_file(file, CONFIG_LIMIT, "config.json")
    if not isinstance(config, dict):
        raise DonorError(f"{file} is not a JSON object")
    return config


def read_folder_tensors(folder: Path) -> tuple[str, tuple[TensorInfo, ...]]:
    """(weight format, tensors) of a folder: an index and its shards, else the weight files."""
    for weight_format, index_name, pattern, reader in WEIGHT_FORMATS:
        index = folder / index_name
        if is_present(index):
            return weight_format, read_sharded(index, reader)
        files = _weight_files(folder, pattern)
        if files:
            tensors: dict[str, TensorInfo] = {}
            for file in files:
                _add_tensors(tensors, reader(file), folder)
            return weight_format, tuple(tensors.values())
    raise DonorError(f"{folder} has no .safetensors or .bin weights")


def _weight_files(folder: Path, pattern: str) -> list[Path]:
    files = sorted(p for p in folder.glob(pattern) if not p.is_dir())
    # Prefer the transformers-named files when a folder also carries other exports.
    chosen = [p for p in files if p.name.startswith(("model", "pytorch_model"))] or files
    for file in chosen:
        donor_file(file, folder)  # a FIFO or a link out of the folder is an error, not skipped
    return chosen


def read_sharded(index: Path, reader: Callable[[Path], dict[str, TensorInfo]]) -> tuple[TensorInfo, ...]:
    """Tensors of a sharded checkpoint; every shard the index lists must exist and agree."""
    weight_map = read_weight_map(index)
    tensors: dict[str, TensorInfo] = {}
    for shard in dict.fromkeys(weight_map.values()):
        file = index.parent / shard
        if not is_present(file):
            raise DonorError(f"{index.name} lists {shard}, which is missing from {index.parent}")
        donor_file(file, index.parent)
        _add_tensors(tensors, reader(file), index.parent)
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is None or info.file != Path(shard).name:
            raise DonorError(f"{index.name} places {name} in {shard}, but that shard does not hold it")
    return tuple(tensors.values())


def _add_tensors(tensors: dict[str, TensorInfo], new: Mapping[str, TensorInfo], folder: Path) -> None:
    tensors.update(new)
    if len(tensors) > MAX_DONOR_TENSORS:
        raise DonorError(f"{folder} holds more than {MAX_DONOR_TENSORS:,} tensors, far more than any real model")


def read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a ``*.index.json`` file."""
    data = read_json_file(index, INDEX_LIMIT, "weight index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DonorError(f"{index} has no valid weight_map")
    if len(weight_map) > MAX_DONOR_TENSORS:
        raise DonorError(f"{index} lists more than {MAX_DONOR_TENSORS:,} tensors, far more than any real model")
    if any(Path(v).is_absolute() or ".." in Path(v).parts for v in weight_map.values()):
        raise DonorError(f"{index} points outside its folder")
    return weight_map


def donor_from_config(
    ref: str,
    kind: str,
    config: Mapping[str, Any],
    tensors: tuple[TensorInfo, ...],
    *,
    path: str | None = None,
    weight_format: str | None = None,
    download_bytes: int = 0,
) -> DonorInfo:
    """Build a :class:`DonorInfo` from a transformers config and a tensor list.

    Raises:
        DonorError: the config lacks the keys needed to describe the model.
    """
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else None
    facts = {**text, **{k: v for k, v in config.items() if k != "text_config"}} if text else dict(config)
    architectures = facts.get("architectures") or ["unknown"]
    architecture = str(architectures[0])
    model_type = str(facts.get("model_type") or "unknown")
    family = FAMILIES.get(model_type, "unknown")
    warnings: list[str] = []
    if family == "unknown":
        warnings.append(f"{ref}: unsupported architecture {architecture} ({model_type}); "
                        "layer tensors are inferred from their names")
    num_layers = _number(facts, "num_hidden_layers", ref, family, _layers_from_names(tensors))
    hidden = _number(facts, "hidden_size", ref, family)
    heads = _number(facts, "num_attention_heads", ref, family)
    kv_heads = _optional_number(facts, "num_key_value_heads", ref, heads)
    head_dim = _optional_number(facts, "head_dim", ref, max(1, hidden // heads))
    intermediate = _number(facts, "intermediate_size", ref, family, 0)
    vocab = _number(facts, "vocab_size", ref, family)
    tied = facts.get("tie_word_embeddings")
    if tied is None:
        tied = family in TIED_BY_DEFAULT or (family == "unknown" and not any(t.name.endswith("lm_head.weight")
                                                                             for t in tensors))
    dtype = _dtype(facts, tensors, ref, warnings)
    window, layers = sliding_window_layers(facts, model_type, num_layers)
    return DonorInfo(
        ref=ref, kind=kind, architecture=architecture, family=family, model_type=model_type,
        num_layers=num_layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab,
        tie_word_embeddings=bool(tied), dtype=dtype, tensors=tensors, path=path,
        weight_format=weight_format, sliding_window=window, sliding_window_layers=layers,
        config=dict(config), warnings=tuple(warnings), download_bytes=download_bytes,
    )


def _number(facts: Mapping[str, Any], key: str, ref: str, family: str, fallback: int | None = None) -> int:
    value = facts.get(key)
    if value is None and family == "unknown":
        # Unknown architectures may use GPT-style names, or only reveal a value in tensor names.
        value = next((facts[a] for a in KEY_ALIASES.get(key, ()) if facts.get(a) is not None), fallback)
    if value is None:
        raise DonorError(f"{ref}: config.json has no {key}")
    minimum = 0 if family == "unknown" and key == "intermediate_size" else 1
    return _checked(value, key, ref, minimum)


def _optional_number(facts: Mapping[str, Any], key: str, ref: str, default: int) -> int:
    """``facts[key]`` checked like :func:`_number`; ``default`` when absent, null or 0."""
    value = facts.get(key)
    return default if value in (None, 0) else _checked(value, key, ref, 1)


def _checked(value: Any, key: str, ref: str, minimum: int) -> int:
    """``value`` when it is a whole number in the plausible range of ``key``, else DonorError."""
    maximum = MAX_LAYERS if key == "num_hidden_layers" else MAX_DIMENSION
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise DonorError(f"{ref}: config.json has an invalid {key}: {shown} "
                         f"(expected a whole number from {minimum} to {maximum:,})")
    return value


def _layers_from_names(tensors: tuple[TensorInfo, ...]) -> int | None:
    indices = [i for t in tensors if (i := layer_index(t.name)) is not None]
    return max(indices) + 1 if indices else None


def _dtype(facts: Mapping[str, Any], tensors: tuple[TensorInfo, ...], ref: str, warnings: list[str]) -> str:
    weights: Counter[str] = Counter()
    for info in tensors:
        if not is_buffer(info.name):
            weights[info.dtype] += info.numel
    stored = torch_name(weights.most_common(1)[0][0]) if weights else None
    declared = facts.get("torch_dtype") or facts.get("dtype")
    code = known_dtype_code(str(declared)) if declared else None
    name = torch_name(code) if code else None
    if name and stored and name != stored:
        warnings.append(f"{ref}: config.json declares {name} but the weights are stored as {stored}")
    if chosen := name or stored:
        return chosen
    raise DonorError(f"{ref}: no dtype in config.json and no weights to infer it from")


def sliding_window_layers(
    facts: Mapping[str, Any], model_type: str, num_layers: int
) -> tuple[int | None, tuple[bool, ...] | None]:
    """(window, per-layer sliding flags) following transformers' rule for the model type.

    ``layer_types`` in the config wins; otherwise Gemma-2 slides on even layers, Qwen2 on
    layers from ``max_window_layers`` when ``use_sliding_window`` is set, and Mistral-style
    models on every layer when a window is set.
    """
    window = facts.get("sliding_window", DEFAULT_SLIDING_WINDOW.get(model_type))
    if model_type == "qwen2" and not facts.get("use_sliding_window", False):
        window = None
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, None
    layer_types = facts.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == num_layers:
        return window, tuple(t == "sliding_attention" for t in layer_types)
    if model_type == "gemma2":
        return window, tuple(i % 2 == 0 for i in range(num_layers))
    if model_type == "qwen2":
        first = facts.get("max_window_layers", 28)
        first = first if isinstance(first, int) else 28  # a malformed value: transformers' default
        return window, tuple(i >= first for i in range(num_layers))
    return window, (True,) * num_layers
