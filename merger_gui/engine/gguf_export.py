"""Export a model folder to one GGUF file that llama.cpp, Ollama and LM Studio load.

Written with llama.cpp's own Python package ``gguf`` (imported only here, when exporting):
its writer, tensor-name map, vocabulary helpers and quantisers, following what
``convert_hf_to_gguf.py`` does for Llama/Mistral, Qwen2, Gemma and Phi-3: the same metadata keys,
the tokenizer (:mod:`.gguf_vocab`), Q/K rows permuted to llama.cpp's RoPE layout for the llama
architecture, Gemma's norms stored as ``1 + w``, F32 norms and biases, and the tensor types of
:func:`~merger_gui.core.quantization.gguf_export_tensor_type`, so the estimator's figure is the data
written. The header and tensor table go first; then one tensor at a time is read, converted and
written (memory: the largest tensor in float32 and its quantised copy). The file is written in a
hidden partial folder beside the target (swept like a merge's when its process is gone) and renamed
into place only when complete. Everything that can be refused is refused before a byte is written.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from merger_gui.core.donor import DonorInfo, TensorInfo
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.inspect import inspect_folder
from merger_gui.core.quantization import (
    GGML_TYPES, GGUF_EXPORT_TYPES, GGUF_EXTRA_TENSORS, gguf_export_tensor_type, gguf_export_tensors, gguf_rope_type,
)
from merger_gui.core.units import format_size

from .gguf_events import ExportCancelled, ExportDone, ExportEvent, ExportProgress
from .gguf_vocab import GGUFVocab, add_vocab, read_vocab
from .output import partial_folder, release_partial, remove_folder, sweep_stale_partials
from .reader import TensorReader

if TYPE_CHECKING:
    import gguf

# Hugging Face architecture -> (llama.cpp architecture, Q/K rows permuted for its RoPE layout).
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True), "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False), "GemmaForCausalLM": ("gemma", False), "Phi3ForCausalLM": ("phi3", False),
}
SUPPORTED_ROPE = ("", "linear", "yarn", "llama3", "dynamic")
FILE_NAME = "model.gguf"  # inside the partial folder
DISK_MARGIN = 64 * 1024 * 1024  # the header: vocabulary, merges, chat template


@dataclass(frozen=True)
class _Planned:
    source: TensorInfo  # Hugging Face name and shape
    name: str  # GGUF name
    ggml_type: str
    nbytes: int


def export_gguf(model_dir: str | Path, out_file: str | Path, export_type: str = "f16", *, overwrite: bool = False,
                cancel: threading.Event | None = None) -> Generator[ExportEvent, None, None]:
    """Write the model in ``model_dir`` to ``out_file`` in ``export_type``, yielding progress.

    Args:
        model_dir: A model folder (config.json, safetensors or .bin weights, tokenizer).
        out_file: The .gguf file to create.
        export_type: ``f16``, ``bf16``, ``q8_0`` or ``q4_0``.
        overwrite: Replace an existing ``out_file`` (only once the new one is complete).
        cancel: Set it to stop between tensors.

    Raises:
        ExportCancelled: ``cancel`` was set; nothing was left behind.
        UserError: an unsupported architecture, tokenizer or type, an existing file, no disk space…
    """
    started = time.monotonic()
    if export_type not in GGUF_EXPORT_TYPES:
        raise UserError(f"unknown GGUF type {export_type!r} (known: {', '.join(GGUF_EXPORT_TYPES)})")
    model = _inspect_model(model_dir)
    arch, permute = _architecture(model)
    folder = Path(model.path or model_dir)
    vocab = read_vocab(folder, model.config, model.family)
    import gguf  # after the cheap refusals: gguf-py takes a moment to import

    planned = _plan(model, arch, export_type)
    target = _check_target(Path(out_file).expanduser().absolute(), overwrite)
    missing = _missing_folders(target)
    sweep_stale_partials([target.parent])
    total = sum(p.nbytes for p in planned)
    _check_space(missing[-1].parent if missing else target.parent, total + DISK_MARGIN)
    writer = gguf.GGUFWriter(None, arch)
    _add_metadata(writer, model, arch, export_type, folder)
    add_vocab(writer, vocab, folder, model.family)
    for p in planned:
        writer.add_tensor_info(p.name, p.source.shape, np.dtype(np.float32), p.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[p.ggml_type])
    partial = partial_folder(target)  # creates the missing folders
    reader = TensorReader({"model": model})
    committed = False
    try:
        file = partial / FILE_NAME
        writer.write_header_to_file(file)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        written = 0
        for k, p in enumerate(planned, 1):
            if cancel is not None and cancel.is_set():
                raise ExportCancelled("export cancelled")
            writer.write_tensor_data(_tensor_data(reader, model, p, permute))
            written += p.nbytes
            elapsed = time.monotonic() - started
            eta = elapsed * (total - written) / written if written else None
            yield ExportProgress(p.name, k, len(planned), written, total, eta)
        writer.close()
        size = file.stat().st_size
        release_partial(partial)
        os.replace(file, target)  # atomic; an existing file (or the link itself) was allowed by ``overwrite``
        committed = True
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        writer.close()
        reader.close()
        remove_folder(partial)  # empty once committed; the partial file otherwise
        if not committed:
            _remove_empty_folders(missing)
    yield ExportDone(target, len(planned), total, size, time.monotonic() - started)


def _architecture(model: DonorInfo) -> tuple[str, bool]:
    """llama.cpp's architecture for ``model`` and whether Q/K are permuted; refuses the rest."""
    name = (model.config.get("architectures") or [model.architecture])[0]
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise DonorError(f"{model.display_name}: GGUF export does not support {name} (supported: {known})")
    if model.config.get("num_local_experts"):
        raise DonorError(f"{model.display_name}: GGUF export does not support mixture-of-experts models")
    rope = gguf_rope_type(model.config)
    if rope not in SUPPORTED_ROPE:
        raise DonorError(f"{model.display_name}: GGUF export does not support {rope!r} RoPE scaling; "
                         "convert it with llama.cpp's convert_hf_to_gguf.py")
    return ARCHITECTURES[name]


def _plan(model: DonorInfo, arch: str, export_type: str) -> list[_Planned]:
    """Every tensor with its GGUF name, type and size; refuses a tensor llama.cpp would not know."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], model.num_layers)
    extras = set(GGUF_EXTRA_TENSORS.values())
    tied = not model.has_lm_head
    planned = []
    for info in gguf_export_tensors(model):
        name = info.name if info.name in extras else names.get_name(info.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise DonorError(f"{model.display_name}: tensor {info.name} has no place in a llama.cpp {arch} model")
        ggml_type = gguf_export_tensor_type(info.name, info.shape, export_type, tied)
        rows = info.numel // info.shape[-1]
        planned.append(_Planned(info, name, ggml_type, rows * GGML_TYPES[ggml_type].row_bytes(info.shape[-1])))
    return planned


def _inspect_model(model_dir: str | Path) -> DonorInfo:
    """The facts of the model folder ``model_dir`` (a merge's output, not a donor: errors say so)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {model_dir} {'is not a folder' if folder.exists() else 'does not exist'}")
    return inspect_folder(model_dir)


def _missing_folders(target: Path) -> list[Path]:
    """The folders above ``target`` that do not exist yet, deepest first: created as ``merge`` creates
    OUT_DIR's, and removed again when the export fails. A path through a file is refused."""
    missing = []
    folder = target.parent
    while not folder.exists():
        if folder.is_symlink():
            raise UserError(f"cannot create {target}: {folder} is a link to nothing; choose another file")
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot create {target}: {folder} is not a folder; choose another file")
    return missing


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _check_target(target: Path, overwrite: bool) -> Path:
    """``target`` when it may be written: new, a link (only the link is replaced) or, with ``overwrite``, a GGUF."""
    if target.is_dir():
        raise UserError(f"{target} is a folder; give the path of the .gguf file to create")
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise UserError(f"{target} already exists; choose another file or replace it (--overwrite)")
    if target.is_symlink():
        return target
    if not target.is_file():
        raise UserError(f"{target} is not replaced: it is not a regular file; choose another file")
    with target.open("rb") as existing:
        if existing.read(4) != b"GGUF":
            raise UserError(f"{target} is not replaced: it is not a GGUF file (--overwrite replaces only a "
                            "previous export); choose another file (or delete it yourself)")
    return target


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(f"not enough disk space in {folder}: the GGUF file needs {format_size(needed, 2)}, "
                        f"{format_size(free, 2)} free")


def _tensor_data(reader: TensorReader, model: DonorInfo, p: _Planned, permute: bool) -> np.ndarray:
    """The bytes of one tensor as written: converted like llama.cpp's converter, then quantised."""
    import gguf

    if p.name in GGUF_EXTRA_TENSORS.values():
        data = _rope_freqs(model)
    else:
        data = _as_numpy(reader.read(reader.locate("model", p.source.name)))
        data = _transform(data, p.source.name, model, permute)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[p.ggml_type])


def _as_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.to(torch.float32)  # bf16 and others: numpy has no bfloat16
    return tensor.numpy()


def _transform(data: np.ndarray, name: str, model: DonorInfo, permute: bool) -> np.ndarray:
    if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(data, model.num_heads)
    if permute and name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(data, model.num_kv_heads)
    if model.family == "gemma" and name.endswith("norm.weight"):
        return data.astype(np.float32) + 1  # llama.cpp's Gemma norm multiplies by w, transformers' by 1 + w
    return data


def _permute(data: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from rotate-half pairs (transformers) to interleaved pairs (llama.cpp)."""
    shape = data.shape
    return data.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_freqs(model: DonorInfo) -> np.ndarray:
    """Llama-3.1's per-frequency RoPE factors, as llama.cpp's converter computes them."""
    scaling = model.config.get("rope_scaling") or model.config.get("rope_parameters") or {}
    base = float(scaling.get("rope_theta") or model.config.get("rope_theta") or 10000.0)
    dim = model.head_dim
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings")
                        or model.config.get("original_max_position_embeddings") or 8192)
    factors = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_metadata(writer: gguf.GGUFWriter, model: DonorInfo, arch: str, export_type: str, folder: Path) -> None:
    """General and architecture keys as convert_hf_to_gguf.py writes them for ``arch``."""
    import gguf

    config = model.config
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{GGUF_EXPORT_TYPES[export_type]}"])
    writer.add_block_count(model.num_layers)
    context = config.get("max_position_embeddings")
    if isinstance(context, int):
        writer.add_context_length(context)
    writer.add_embedding_length(model.hidden_size)
    writer.add_feed_forward_length(model.intermediate_size)
    writer.add_head_count(model.num_heads)
    writer.add_head_count_kv(model.num_kv_heads)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if isinstance(config.get("head_dim"), int) or arch == "gemma":
        writer.add_key_length(model.head_dim)
        writer.add_value_length(model.head_dim)
    if arch != "gemma":  # llama.cpp's converter leaves Gemma at its built-in RoPE base
        _add_rope(writer, config)
    if arch == "llama":
        writer.add_vocab_size(model.vocab_size)
        writer.add_rope_dimension_count(model.head_dim)
    elif arch == "phi3":
        _add_phi3(writer, model)


def _add_rope(writer: gguf.GGUFWriter, config: Mapping[str, Any]) -> None:
    import gguf

    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    theta = scaling.get("rope_theta") or config.get("rope_theta")
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    kind, factor = gguf_rope_type(config), scaling.get("factor")
    if kind == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))


def _add_phi3(writer: gguf.GGUFWriter, model: DonorInfo) -> None:
    config = model.config
    rotary = float(config.get("partial_rotary_factor", 1.0))
    original = config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    if original is None:
        raise DonorError(f"{model.display_name}: config.json gives no max_position_embeddings, which Phi-3 GGUF needs")
    writer.add_rope_scaling_orig_ctx_len(int(original))
    writer.add_rope_dimension_count(int(rotary * model.hidden_size) // model.num_heads)
    writer.add_sliding_window(int(config.get("sliding_window") or 0))


__all__ = ["ExportCancelled", "ExportDone", "ExportEvent", "ExportProgress", "GGUFVocab", "export_gguf"]
