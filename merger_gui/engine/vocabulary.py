"""Output vocabulary of a stage with a tokenizer section, and rows rebuilt to it.

With ``tokenizer_source`` (or ``tokenizer:``), mergekit rebuilds every vocabulary-indexed
tensor of every donor (embeddings, lm_head) to the output vocabulary before merging:
row ``i`` is the donor's own row for token ``i``; a token the donor lacks gets, from the
other inputs of the same tensor, the row of the only one that has it, else the base's
row, else the mean of those that have it, else zeros; ``tokenizer.tokens`` overrides
rows; padding rows get the mean row. The output token set comes from
:mod:`merger_gui.core.tokenizer_vocab`, which the plan uses too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import DonorError, UserError
from merger_gui.core.recipe import Stage, TokenEmbedding
from merger_gui.core.safe_files import TOKENIZER_LIMIT, donor_file, is_present, read_json_file
from merger_gui.core.tokenizer_vocab import (
    TOKENIZER_FILE, DonorVocabulary, read_tokenizer_vocabulary, stage_output_tokens,
)

# Copied beside the rewritten tokenizer.json; tokenizer.model only when no token changed.
COMPANION_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

__all__ = ["VocabularyPlan", "build_vocabulary", "read_tokenizer_vocabulary"]


@dataclass(frozen=True)
class _Override:
    """A ``tokenizer.tokens`` entry resolved against the donors."""

    kind: str  # "model" (the token's own row in model), "row" (a fixed row of model), "zero"
    force: bool
    model: str | None = None
    row: int = -1


class VocabularyPlan:
    """The output vocabulary of one stage and how each donor's rows map onto it."""

    def __init__(self, tokens: dict[str, int], donors: Mapping[str, DonorVocabulary], base: str,
                 tokenizer_donor: str, overrides: Mapping[str, _Override], pad_to_multiple_of: int | None) -> None:
        self.tokens = tokens
        self.donors = dict(donors)
        self.base = base
        self.tokenizer_donor = tokenizer_donor
        self.overrides = dict(overrides)
        size = len(tokens)
        if any(i >= size or i < 0 for i in tokens.values()):
            raise DonorError(f"the tokenizer of {tokenizer_donor} has gaps in its token ids; "
                             "it cannot define an output vocabulary")
        self.num_tokens = size
        self.vocab_size = -(-size // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else size
        order = sorted(tokens, key=tokens.__getitem__)
        self._order = order
        self._rows = {
            model: torch.tensor([d.row(t) for t in order], dtype=torch.long) for model, d in self.donors.items()
        }

    def rows_of(self, model: str) -> torch.Tensor:
        """For every output token id, the donor's row for it (-1 when it lacks the token)."""
        try:
            return self._rows[model]
        except KeyError:
            raise UserError(f"{model} is not a model of this stage") from None

    def align(self, model: str, tensor: torch.Tensor) -> torch.Tensor:
        """Rebuild a vocabulary tensor merged from this donor alone (e.g. passthrough)."""
        return self.align_all([model], [tensor])[0]

    def align_all(self, models: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Rebuild the vocabulary rows of every input of one output tensor.

        Missing rows are filled from the other inputs of the same tensor, so pass all of
        them at once. Rows are axis 0; the results have the inputs' promoted dtype.
        """
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        if any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
            raise UserError("vocabulary tensors differ beyond their row count: "
                            + ", ".join(f"{m} {list(t.shape)}" for m, t in zip(models, tensors)))
        rows = [self.rows_of(m) for m in models]
        for model, t, r in zip(models, tensors, rows):
            if int(r.max()) >= t.shape[0]:
                raise DonorError(f"{model}: its vocabulary tensor has {t.shape[0]} rows but its tokenizer "
                                 f"uses ids up to {int(r.max())}")
        fill = self._fill_rows(models, tensors, rows, dtype)
        results = []
        for t, r in zip(tensors, rows):
            out = torch.zeros((self.vocab_size, *t.shape[1:]), dtype=dtype, device=t.device)
            present = (r >= 0).nonzero().squeeze(1)
            out[present] = t[r[present]].to(dtype)
            for token_id, row in fill.items():
                if r[token_id] < 0 or self._forced(token_id):
                    out[token_id] = row
            if self.vocab_size > self.num_tokens:
                # Padding rows take the mean embedding.
                out[self.num_tokens:] = torch.mean(out[: self.num_tokens], dim=0)
            results.append(out)
        return results

    def _forced(self, token_id: int) -> bool:
        override = self.overrides.get(self._order[token_id])
        return override is not None and override.force

    def _fill_rows(self, models: Sequence[str], tensors: Sequence[torch.Tensor], rows: Sequence[torch.Tensor],
                   dtype: torch.dtype) -> dict[int, torch.Tensor]:
        """Rows for tokens some input lacks (or whose override is forced), by output id."""
        shape = tensors[0].shape[1:]
        device = tensors[0].device
        incomplete = (torch.stack(list(rows)) < 0).any(dim=0).nonzero().squeeze(1).tolist()
        candidates = sorted(set(incomplete) | {self.tokens[t] for t, o in self.overrides.items() if o.force})
        fill: dict[int, torch.Tensor] = {}
        for token_id in candidates:
            token = self._order[token_id]
            override = self.overrides.get(token)
            holders = [k for k, r in enumerate(rows) if r[token_id] >= 0]
            if override is not None:
                fill[token_id] = self._override_row(override, token, models, tensors, dtype)
            elif len(holders) == 1:
                k = holders[0]
                fill[token_id] = tensors[k][rows[k][token_id]].to(dtype)
            elif not holders:
                fill[token_id] = torch.zeros(shape, dtype=dtype, device=device)
            elif self.base in models and rows[list(models).index(self.base)][token_id] >= 0:
                k = list(models).index(self.base)
                fill[token_id] = tensors[k][rows[k][token_id]].to(dtype)
            else:
                total = torch.zeros(shape, dtype=dtype, device=device)
                for k in holders:
                    total = total + tensors[k][rows[k][token_id]]
                total /= len(holders)
                fill[token_id] = total
        return fill

    def _override_row(self, override: _Override, token: str, models: Sequence[str],
                      tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if override.kind == "zero":
            return tensors[0].new_zeros(tensors[0].shape[1:]).to(dtype)
        model = override.model
        assert model is not None  # only a "zero" override names no model
        if model not in models:
            raise UserError(f"token {token!r} takes its row from {model}, which is not an input of this tensor")
        k = list(models).index(model)
        row = override.row if override.kind == "row" else int(self.rows_of(model)[self.tokens[token]].item())
        if not 0 <= row < tensors[k].shape[0]:
            raise UserError(f"token {token!r}: {model} has no row for it")
        return tensors[k][row].to(dtype)

    def save(self, out_dir: Path) -> None:
        """Write the output tokenizer (tokenizer.json and its companion files) to ``out_dir``."""
        source = self.donors[self.tokenizer_donor]
        data = read_json_file(source.folder / TOKENIZER_FILE, TOKENIZER_LIMIT, TOKENIZER_FILE, small_ints=False)
        model_vocab = data["model"]["vocab"]
        kept_added = [e for e in data.get("added_tokens") or () if self.tokens.get(e["content"]) == e["id"]]
        changed = len(kept_added) != len(data.get("added_tokens") or ())
        if isinstance(model_vocab, dict):
            stripped = {t: i for t, i in model_vocab.items() if self.tokens.get(t) == i}
            if len(stripped) != len(model_vocab):
                changed = True
                data["model"]["vocab"] = stripped
                if isinstance(data["model"].get("merges"), list):
                    data["model"]["merges"] = [m for m in data["model"]["merges"] if _merge_kept(m, stripped)]
        known = set(data["model"]["vocab"]) if isinstance(model_vocab, dict) else {e[0] for e in model_vocab}
        known |= {e["content"] for e in kept_added}
        for token in sorted((t for t in self.tokens if t not in known), key=self.tokens.__getitem__):
            changed = True
            kept_added.append(self._added_entry(token))
        data["added_tokens"] = kept_added
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        for name in COMPANION_FILES + (() if changed else ("tokenizer.model",)):
            if is_present(source.folder / name):
                shutil.copyfile(donor_file(source.folder / name), out_dir / name)
        self._update_tokenizer_config(out_dir / "tokenizer_config.json", kept_added)

    def _added_entry(self, token: str) -> dict[str, Any]:
        for donor in self.donors.values():
            if token in donor.added:
                return dict(donor.added[token], id=self.tokens[token])
        return {"id": self.tokens[token], "content": token, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": True, "special": False}

    def _update_tokenizer_config(self, file: Path, added: list[dict[str, Any]]) -> None:
        if not file.is_file():
            return
        config = read_json_file(file, TOKENIZER_LIMIT, file.name)
        if not isinstance(config, dict) or "added_tokens_decoder" not in config:
            return
        config["added_tokens_decoder"] = {
            str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in added
        }
        file.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _merge_kept(merge: Any, vocab: Mapping[str, int]) -> bool:
    parts = merge.split(" ") if isinstance(merge, str) else list(merge)
    return all(p in vocab for p in parts)


def build_vocabulary(stage: Stage, donors: Mapping[str, DonorInfo],
                     tokenizer_dirs: Mapping[str, Path] | None = None) -> VocabularyPlan | None:
    """The output vocabulary of ``stage``, or None when it has no tokenizer section.

    Args:
        stage: The stage; ``tokenizer_source`` / ``tokenizer`` decide the vocabulary.
        donors: Every model the stage references (and a tokenizer source model).
        tokenizer_dirs: Folder holding each model's tokenizer.json (default: the donor's path).

    Raises:
        DonorError: when a donor's tokenizer cannot be read.
        UserError: on a token override naming an unknown model or token.
    """
    if stage.effective_tokenizer_source is None:
        return None
    out = stage_output_tokens(stage, donors, tokenizer_dirs)
    overrides = dict(stage.tokenizer.tokens) if stage.tokenizer else {}
    resolved = {t: _resolve_override(t, e, out.vocabularies) for t, e in overrides.items()}
    pad = stage.tokenizer.pad_to_multiple_of if stage.tokenizer else None
    return VocabularyPlan(out.tokens, out.vocabularies, out.base, out.tokenizer_donor, resolved, pad)


def _resolve_override(token: str, entry: TokenEmbedding, vocabularies: Mapping[str, DonorVocabulary]) -> _Override:
    if entry.kind == "zero":
        return _Override("zero", entry.force)
    if entry.source is None:
        raise UserError(f"tokenizer token {token!r} has no source")
    if entry.source not in vocabularies:
        raise UserError(f"tokenizer token {token!r} takes its row from {entry.source}, which the stage does not use")
    if entry.kind is None:
        return _Override("model", entry.force, entry.source)
    row = entry.token_id
    if row is None:
        row = vocabularies[entry.source].tokens.get(entry.token or "")
        if row is None:
            raise UserError(f"tokenizer token {token!r}: {entry.source} has no token {entry.token!r}")
    return _Override("row", entry.force, entry.source, row)
