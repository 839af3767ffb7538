"""A model folder's tokenizer as GGUF metadata, the way llama.cpp's convert_hf_to_gguf.py writes it.

Two kinds are supported: a SentencePiece ``tokenizer.model`` (Llama-2, Mistral, Gemma, Phi-3:
``tokenizer.ggml.model = llama`` with scores) and a byte-level BPE ``tokenizer.json`` (Llama-3,
Qwen2: ``gpt2`` with merges). llama.cpp picks the BPE pre-tokenizer by name; the converter finds
it by hashing a test string's tokens, we by the split expression in ``tokenizer.json``, so only
expressions llama.cpp knows are accepted. Special token ids, ``add_bos``/``add_eos``, merges and
the chat template come from gguf-py's :class:`gguf.SpecialVocab`. Anything else is refused with
one line before a file is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger_gui.core.errors import DonorError
from merger_gui.core.safe_files import CONFIG_LIMIT, TOKENIZER_LIMIT, donor_file, is_present, read_json_file

if TYPE_CHECKING:
    import gguf

# gguf.TokenType values (not imported: gguf-py loads only when a file is written).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_LETTERS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# tokenizer.json split expressions -> llama.cpp's pre-tokenizer name.
PRE_TOKENIZERS = {_LETTERS + r"\p{N}{1,3}" + _REST: "llama-bpe", _LETTERS + r"\p{N}" + _REST: "qwen2"}
SPACE = "\u2581"


@dataclass(frozen=True)
class GGUFVocab:
    """The token list of a GGUF file: ``model`` is ``llama`` (SentencePiece) or ``gpt2`` (BPE)."""

    model: str
    pre: str
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    scores: tuple[float, ...] | None  # SentencePiece only


def read_vocab(folder: Path, config: Mapping[str, Any], family: str) -> GGUFVocab:
    """The vocabulary of the model in ``folder``, padded to the config's ``vocab_size``.

    Raises:
        DonorError: no tokenizer llama.cpp can use (one line, naming the reason).
    """
    if is_present(folder / "tokenizer.model"):
        return _sentencepiece_vocab(folder, config)
    if family == "gemma":
        raise DonorError(f"{folder}: Gemma needs its SentencePiece tokenizer.model for GGUF")
    if not is_present(folder / "tokenizer.json"):
        raise DonorError(f"{folder}: no tokenizer.model or tokenizer.json to put in the GGUF file")
    return _bpe_vocab(folder, config)


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab, folder: Path, family: str) -> None:
    """Write ``vocab`` and the special tokens, merges and chat template of ``folder``."""
    import gguf

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    if vocab.scores is not None:
        writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    special.add_to_gguf(writer, quiet=True)
    prefix_space = _json(folder / "tokenizer_config.json", CONFIG_LIMIT).get("add_prefix_space")
    if family == "gemma":
        writer.add_add_space_prefix(False)
    elif isinstance(prefix_space, bool) and family == "llama":
        writer.add_add_space_prefix(prefix_space)


def looks_special(token: str) -> bool:
    """Added tokens llama.cpp treats as control even when not marked special (``<|im_start|>``…)."""
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>") \
        or (token.startswith("<unused") and token.endswith(">"))


def _sentencepiece_vocab(folder: Path, config: Mapping[str, Any]) -> GGUFVocab:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise DonorError("reading tokenizer.model needs the sentencepiece package (pip install sentencepiece)") \
            from None
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(donor_file(folder / "tokenizer.model", folder)))
    except (OSError, RuntimeError) as exc:
        raise DonorError(f"{folder / 'tokenizer.model'} is not a SentencePiece model ({exc})") from None
    size = _vocab_size(config, processor.vocab_size(), folder)
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    for i in range(processor.vocab_size()):
        tokens[i], scores[i], types[i] = processor.IdToPiece(i), processor.GetScore(i), _piece_type(processor, i)
    added = _json(folder / "added_tokens.json", CONFIG_LIMIT)
    for text, i in added.items():
        if isinstance(i, int) and 0 <= i < size:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    decoder = _json(folder / "tokenizer_config.json", CONFIG_LIMIT).get("added_tokens_decoder") or {}
    for key, entry in decoder.items():
        i, text = int(key), str(entry.get("content", ""))
        if not 0 <= i < size or not text:
            continue
        special = bool(entry.get("special")) or looks_special(text)
        # llama.cpp expects user-defined tokens pre-normalised: the SentencePiece space as a space.
        tokens[i] = text if special else text.replace(SPACE, " ")
        scores[i], types[i] = -1000.0, CONTROL if special else USER_DEFINED
    return GGUFVocab("llama", "default", tuple(tokens), tuple(types), tuple(scores))


def _piece_type(processor: Any, i: int) -> int:
    if processor.IsUnknown(i):
        return UNKNOWN
    if processor.IsControl(i):
        return CONTROL
    if processor.IsUnused(i):
        return UNUSED
    return BYTE if processor.IsByte(i) else NORMAL


def _bpe_vocab(folder: Path, config: Mapping[str, Any]) -> GGUFVocab:
    data = _json(folder / "tokenizer.json", TOKENIZER_LIMIT)
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        kind = model.get("type", "unknown")
        raise DonorError(f"{folder}: tokenizer.json is a {kind} tokenizer without tokenizer.model; "
                         "GGUF export reads SentencePiece models and byte-level BPE tokenizers")
    pre = _pre_tokenizer(data.get("pre_tokenizer") or {})
    if pre is None:
        raise DonorError(f"{folder}: tokenizer.json splits text in a way llama.cpp has no pre-tokenizer for "
                         "(known: GPT-2, Llama-3, Qwen2); convert it with llama.cpp's convert_hf_to_gguf.py")
    by_id: dict[int, str] = {int(i): str(t) for t, i in (model.get("vocab") or {}).items()}
    added = {int(e["id"]): e for e in data.get("added_tokens") or ()}
    by_id.update({i: str(e["content"]) for i, e in added.items()})
    size = _vocab_size(config, max(by_id, default=-1) + 1, folder)
    tokens, types = [], []
    for i in range(size):
        entry = added.get(i)
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            types.append(UNUSED)
        elif entry is not None:
            types.append(CONTROL if entry.get("special") or looks_special(tokens[-1]) else USER_DEFINED)
        else:
            types.append(NORMAL)
    return GGUFVocab("gpt2", pre, tuple(tokens), tuple(types), None)


def _pre_tokenizer(spec: Mapping[str, Any]) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when it has none."""
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True) and not spec.get("add_prefix_space"):
        return "gpt-2"
    steps = spec.get("pretokenizers") or [] if spec.get("type") == "Sequence" else []
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel" \
            or steps[1].get("use_regex", True):
        return None
    regex = (steps[0].get("pattern") or {}).get("Regex")
    return PRE_TOKENIZERS.get(regex) if isinstance(regex, str) else None


def _vocab_size(config: Mapping[str, Any], tokenizer_size: int, folder: Path) -> int:
    size = config.get("vocab_size")
    size = size if isinstance(size, int) and not isinstance(size, bool) else tokenizer_size
    if tokenizer_size > size:
        raise DonorError(f"{folder}: the tokenizer has {tokenizer_size:,} tokens, more than the "
                         f"model's vocab_size {size:,}")
    return size


def _json(file: Path, limit: int) -> dict[str, Any]:
    """A donor JSON object, or an empty one when the file is absent."""
    if not is_present(file):
        return {}
    data = read_json_file(file, limit, file.name, small_ints=False)
    if not isinstance(data, dict):
        raise DonorError(f"{file} is not a JSON object")
    return data
