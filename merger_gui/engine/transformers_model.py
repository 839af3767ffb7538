"""A local model folder run with transformers: checked, loaded on a device, released, and a text tokenized.

Shared by the evaluation (perplexity, agreement, generation) and the activation analysis. torch and
transformers are imported only when a model is loaded or a text tokenized.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from merger_gui.core.errors import UserError
from merger_gui.core.inspect import check_metadata_files, read_config, read_folder_tensors

__all__ = [
    "TOKENIZER_FILES", "context_length", "first_line", "loaded_model", "model_folder", "quiet_transformers",
    "token_ids",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def model_folder(path: str | Path) -> Path:
    """``path`` as a model folder transformers can load: config, tokenizer and sound weight headers.

    Raises:
        UserError: not a folder, no config.json or tokenizer, a malformed config or weight file.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{path} does not exist" if not folder.exists() else f"{path} is not a folder")
    if not (folder / "config.json").is_file():
        raise UserError(f"{path} is not a model folder (no config.json)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer (tokenizer.json, tokenizer.model or tokenizer_config.json); "
                        "copy the tokenizer files of its base model into it")
    read_config(folder / "config.json")  # bounded, regular files and sound weight headers before
    check_metadata_files(folder)  # transformers reads them without these guards
    read_folder_tensors(folder)
    return folder


@contextmanager
def loaded_model(folder: Path, device: str) -> Iterator[tuple[Any, Any]]:
    """The model and tokenizer of ``folder`` on ``device`` (cpu or cuda), released (memory freed) on exit.

    Raises:
        UserError: torch or transformers missing, an unknown or absent device, a model transformers
            cannot load as a causal language model.
    """
    torch, transformers = _libraries()
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but no CUDA GPU is available to torch; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}: use cpu or cuda")
    with quiet_transformers(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            # CPU kernels are fastest and complete in float32; a GPU runs the stored 16-bit dtype.
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32 if device == "cpu" else "auto").to(device)
        except (ValueError, KeyError, OSError, ImportError) as exc:
            raise UserError(f"transformers cannot load {folder} as a causal language model: "
                            f"{first_line(exc)}") from None
    model.eval()
    threads = torch.get_num_threads()
    # One core fewer than torch's default: on a busy machine, OpenMP threads waiting for the one the
    # system has not scheduled made a forward pass 15x slower (two cores, 0.25 s against 3.5-4.6 s),
    # and the window's thread keeps a core.
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield model, tokenizer
    finally:
        torch.set_num_threads(threads)
        del model
        if threading.current_thread() is threading.main_thread():
            gc.collect()  # free the model's reference cycles before the next model loads
        # On a worker thread the window's GUI-thread collector frees them within a second
        # (qt/app.py): collecting here would also free Qt objects off their thread.
        if device == "cuda":
            torch.cuda.empty_cache()


def context_length(model: Any) -> int:
    """The most positions the model was trained for (its ``max_position_embeddings``)."""
    length = getattr(model.config, "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 1 else 2**31


def token_ids(model: Any, tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """``text`` tokenized as the tokenizer does by default (special tokens added), cut to ``max_tokens``
    and to the model's context length."""
    import transformers

    with quiet_transformers(transformers):  # no warning that the text is longer than the context: it is cut
        return list(tokenizer(text)["input_ids"][:min(max_tokens, context_length(model))])


@contextmanager
def quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars or advice on stderr while loading (the caller shows progress)."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _libraries() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise UserError(f"evaluating a model needs transformers and torch ({exc}); "
                        "install them with: pip install 'transformers>=4.56'") from None
    return torch, transformers


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
