"""Output token set of a stage with a tokenizer section, read from ``tokenizer.json`` files.

mergekit builds the output tokenizer of ``tokenizer_source`` (or ``tokenizer:``) from the
donors' tokenizers: ``base`` is the base's tokenizer stripped of ids without an embedding
row, ``union`` is that plus every other donor's tokens that have a row (ordinary tokens
first, then added tokens), a model name is that model's tokenizer whole; token overrides
the vocabulary lacks are appended. Vocabularies are read without tokenizer libraries
(``model.vocab`` plus ``added_tokens``), so the plan can size the output's embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .donor import DonorInfo
from .errors import DonorError, UserError
from .recipe import Stage
from .safe_files import TOKENIZER_LIMIT, donor_file, is_present, read_json_file

TOKENIZER_FILE = "tokenizer.json"
MAX_TOKEN_ID = 2**31  # ids index embedding rows


@dataclass(frozen=True)
class DonorVocabulary:
    """One donor's tokenizer: token → id (model vocabulary and added tokens) and its folder."""

    folder: Path
    tokens: dict[str, int]
    added: dict[str, dict[str, Any]]  # added-token entries of tokenizer.json by content
    rows: int  # embedding rows (config vocab_size); ids at or past it have no row

    def row(self, token: str) -> int:
        """The donor's embedding row of ``token``, or -1 when it has none."""
        index = self.tokens.get(token, -1)
        return index if index < self.rows else -1


@dataclass(frozen=True)
class OutputTokens:
    """The output vocabulary of a stage: token → output id, and where its tokenizer comes from."""

    tokens: dict[str, int]
    tokenizer_donor: str  # the donor whose tokenizer.json the output's is built from
    base: str
    vocabularies: dict[str, DonorVocabulary]  # every model's, the base's stripped to its rows


def read_tokenizer_vocabulary(folder: Path) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Token → id of ``folder/tokenizer.json`` and its added-token entries by content.

    Raises:
        DonorError: when the file is missing or not a tokenizer.json.
    """
    file = Path(folder) / TOKENIZER_FILE
    if not is_present(file):
        raise DonorError(f"{folder}: no {TOKENIZER_FILE}; a tokenizer section needs every donor's {TOKENIZER_FILE}")
    try:
        stat = donor_file(file).stat()
    except OSError as exc:
        raise DonorError(f"{file}: not a readable tokenizer ({exc.strerror or exc})") from None
    tokens, added = _read_cached(str(file), stat.st_mtime_ns, stat.st_size)
    return dict(tokens), dict(added)


@lru_cache(maxsize=32)
def _read_cached(file: str, mtime_ns: int, size: int) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Parse one tokenizer.json; keyed by modification time and size so the plan can re-read cheaply."""
    del mtime_ns, size  # cache key only
    data = read_json_file(file, TOKENIZER_LIMIT, TOKENIZER_FILE, small_ints=False)
    try:
        vocab = data["model"]["vocab"]
        # Unigram vocabularies are [piece, score] lists: the id is the position.
        tokens = dict(vocab) if isinstance(vocab, dict) else {entry[0]: i for i, entry in enumerate(vocab)}
        added = {entry["content"]: entry for entry in data.get("added_tokens") or ()}
        tokens.update({content: int(entry["id"]) for content, entry in added.items()})
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DonorError(f"{file}: not a readable tokenizer ({exc})") from None
    if not all(type(i) is int and 0 <= i < MAX_TOKEN_ID for i in tokens.values()):
        raise DonorError(f"{file}: not a readable tokenizer (a token id is not a whole number below {MAX_TOKEN_ID:,})")
    return tokens, added


def tokenizer_models(stage: Stage) -> tuple[str, list[str]]:
    """The base of the token set (base model, else the first model) and every model whose tokenizer it reads.

    Raises:
        UserError: the stage references no model.
    """
    source = stage.effective_tokenizer_source
    models = list(stage.referenced_models)
    base = stage.base_model or (models[0] if models else None)
    if base is None:
        raise UserError("the recipe has no models")
    if source not in (None, "base", "union") and source not in models:
        models.append(source)
    return base, models


def donor_vocabulary(model: str, donor: DonorInfo | None, folder: str | Path | None = None) -> DonorVocabulary:
    """The vocabulary of ``model`` from ``folder`` (default: the donor's own folder).

    Raises:
        DonorError: no folder, or no readable tokenizer.json in it.
    """
    if folder is None and donor is not None:
        folder = donor.path
    if donor is None or folder is None:
        raise DonorError(f"{model}: no local folder to read its tokenizer from")
    tokens, added = read_tokenizer_vocabulary(Path(folder))
    return DonorVocabulary(Path(folder), tokens, added, donor.vocab_size)


def output_tokens(stage: Stage, vocabularies: Mapping[str, DonorVocabulary]) -> OutputTokens:
    """The output vocabulary of ``stage``, given the vocabulary of every model of :func:`tokenizer_models`.

    Raises:
        UserError: the stage has no tokenizer section or no models.
    """
    source = stage.effective_tokenizer_source
    if source is None:
        raise UserError("the stage has no tokenizer section")
    base, models = tokenizer_models(stage)
    vocabularies = dict(vocabularies)
    unstripped = vocabularies[base].tokens
    # The base's tokenizer keeps only tokens that have embedding rows.
    base_vocab = vocabularies[base]
    base_tokens = {t: i for t, i in base_vocab.tokens.items() if i < base_vocab.rows}
    vocabularies[base] = DonorVocabulary(base_vocab.folder, base_tokens, base_vocab.added, base_vocab.rows)

    if source == "base":
        tokens, tokenizer_donor = dict(base_tokens), base
    elif source == "union":
        tokens, tokenizer_donor = _union(base, models, vocabularies), base
    else:
        # A tokenizer named by reference is taken whole, even the base's.
        tokens = dict(unstripped if source == base else vocabularies[source].tokens)
        tokenizer_donor = source
    for token in dict(stage.tokenizer.tokens) if stage.tokenizer else {}:
        tokens.setdefault(token, len(tokens))  # mergekit adds override tokens the vocabulary lacks
    return OutputTokens(tokens, tokenizer_donor, base, vocabularies)


def stage_output_tokens(stage: Stage, donors: Mapping[str, DonorInfo],
                        folders: Mapping[str, Path] | None = None) -> OutputTokens:
    """:func:`output_tokens` with every vocabulary read from the donors' folders (or ``folders``).

    Raises:
        DonorError: a model has no folder or no readable tokenizer.json.
        UserError: the stage has no tokenizer section or no models.
    """
    _, models = tokenizer_models(stage)
    vocabularies = {m: donor_vocabulary(m, donors.get(m), (folders or {}).get(m)) for m in models}
    return output_tokens(stage, vocabularies)


def _union(base: str, models: Sequence[str], vocabularies: Mapping[str, DonorVocabulary]) -> dict[str, int]:
    """The base's tokens, then every other token with a row, deterministically: ordinary
    tokens first, then added tokens, each by donor order and id."""
    order = [base] + [m for m in models if m != base]
    tokens = dict(vocabularies[base].tokens)
    for added_pass in (False, True):
        for model in order:
            vocab = vocabularies[model]
            for token, index in sorted(vocab.tokens.items(), key=lambda item: item[1]):
                if index < vocab.rows and (token in vocab.added) == added_pass and token not in tokens:
                    tokens[token] = len(tokens)
    return tokens
