"""Checks of the output vocabulary: tokenizer sources, vocabulary sizes, token overrides."""

from __future__ import annotations

from .. import quick_fixes as fixes
from ..errors import UserError
from ..plan import config_donor_name
from ..tokenizer_vocab import stage_output_tokens
from .context import StageContext

def check_tokenizer(ctx: StageContext) -> None:
    stage = ctx.stage
    key = "tokenizer.source" if stage.tokenizer is not None else "tokenizer_source"
    named = [(key, stage.effective_tokenizer_source)]
    if stage.tokenizer is not None:
        named += [(f"tokenizer.tokens.{token}.source", e.source) for token, e in stage.tokenizer.tokens]
    models = ", ".join(stage.referenced_models)
    pad = stage.tokenizer.pad_to_multiple_of if stage.tokenizer is not None else None
    if pad is not None and pad < 0:
        ctx.add("error", "negative-padding",
                f"tokenizer.pad_to_multiple_of must be a positive number of rows, not {pad}",
                key="tokenizer.pad_to_multiple_of")
    for field, source in named:
        if source is not None and source not in ("base", "union") and source not in stage.referenced_models:
            bare = source.removeprefix("model:").strip()
            if source.startswith("model:") and bare in stage.referenced_models:
                ctx.add("error", "tokenizer-source-prefix",
                        f"{field} {source!r}: mergekit reads the `model:` prefix as part of the name; write "
                        f"`{field.rsplit('.', 1)[-1]}: {bare}`", key=field)
                continue
            ctx.add("error", "tokenizer-source-not-in-stage",
                    f"{field} {source!r} is not a model of this stage; use base, union or one of: {models}",
                    key=field)


def check_vocab(ctx: StageContext) -> None:
    stage, spec = ctx.stage, ctx.spec
    if spec is None or stage.effective_tokenizer_source is not None:
        return
    slices = ctx.slices()
    if not spec.uses_vocab_merge:
        if not slices:
            return
        roles = (("embed_tokens", slices[0].sources[0].model), ("lm_head", slices[-1].sources[0].model),
                 ("config.json", config_donor_name(stage)))
        sizes = [(what, m, d.vocab_size) for what, m in roles if (d := ctx.donor(m)) is not None]
        if len({size for _, _, size in sizes}) > 1:
            detail = ", ".join(f"{what} from {m} ({size} rows)" for what, m, size in sizes)
            ctx.add("error", "passthrough-vocab-mismatch",
                    f"donors have different vocabulary sizes: {detail}; the output would not load — "
                    "add `tokenizer_source: base` to rebuild both to one vocabulary", key="tokenizer_source",
                    fix=fixes.tokenizer_base_fix(ctx.index))
        return
    model_sizes = [(m, d.vocab_size) for m, d in ctx.known_models()]
    if len({size for _, size in model_sizes}) > 1:
        detail = ", ".join(f"{m}: {size}" for m, size in model_sizes)
        ctx.add("error", "vocab-size-mismatch",
                f"donors have different vocabulary sizes ({detail}) and there is no tokenizer section; "
                "add `tokenizer_source: base`", key="tokenizer_source", fix=fixes.tokenizer_base_fix(ctx.index))


def check_token_overrides(ctx: StageContext) -> None:
    """``tokenizer.tokens`` rows taken from a token the named model does not have."""
    stage = ctx.stage
    if stage.tokenizer is None or not stage.tokenizer.tokens:
        return
    try:
        vocabularies = stage_output_tokens(stage, ctx.donors).vocabularies
    except UserError:
        return  # unreadable tokenizers: the donor checks and the engine say why
    for token, entry in stage.tokenizer.tokens:
        key = f"tokenizer.tokens.{token}.source"
        vocab = vocabularies.get(entry.source or "")
        if entry.kind == "zero" or vocab is None:
            continue
        if entry.kind == "model_token" and entry.token_id is None and entry.token not in vocab.tokens:
            ctx.add("error", "unknown-token",
                    f"tokenizer token {token!r} takes the row of {entry.token!r}, which {entry.source} "
                    "does not have", key=key)
        elif entry.kind == "model_token" and entry.token_id is not None \
                and not 0 <= entry.token_id < vocab.rows:
            ctx.add("error", "unknown-token",
                    f"tokenizer token {token!r} takes row {entry.token_id} of {entry.source}, which has "
                    f"{vocab.rows} rows", key=key)
