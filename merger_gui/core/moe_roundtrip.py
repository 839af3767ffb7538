"""Saving a mergekit-moe recipe over the user's file: the loaded text edited in place.

Only the values an edit changed are rewritten; every other line is copied over verbatim
(comments, key order, quoting), as :mod:`.recipe_roundtrip` does for merge recipes.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from .errors import RecipeError
from .moe_recipe import MoeExpert, MoeRecipe, dump_moe, load_moe_text, parse_moe
from .recipe_dump import dump_documents, fresh_node
from .recipe_load import load_documents
from .recipe_roundtrip import _splice_lines, _update_mapping

EXPERT_FIELDS = tuple(field.name for field in fields(MoeExpert))  # each the YAML key of the same name
QUOTED = (DoubleQuotedScalarString, SingleQuotedScalarString)
INLINE_COMMENT = re.compile(r"(?<=[^\s#])( +)(#.*)$")  # a value, its gap, its comment


def edit_moe_text(recipe: MoeRecipe, original_text: str | None) -> str:
    """``original_text`` edited to mean ``recipe``: the text itself when it already does, fresh
    :func:`dump_moe` YAML when there is none or it no longer reads as an MoE recipe."""
    if original_text is None:
        return dump_moe(recipe)
    try:
        documents = load_documents(original_text)
        old = parse_moe(documents[0][0]) if len(documents) == 1 else None
    except RecipeError:
        old = None
    if old is None:
        return dump_moe(recipe)
    if old == recipe:
        return original_text
    doc = documents[0][0]
    explicit_start = original_text.lstrip().startswith("---")
    before = dump_documents([doc], explicit_start)
    _update_recipe(doc, old, recipe)
    after = dump_documents([doc], explicit_start)
    spliced = _keep_comment_gaps(original_text, _splice_lines(original_text, before, after))
    return next((text for text in (spliced, after) if _reads_as(text, recipe)), dump_moe(recipe))


def _keep_comment_gaps(original: str, text: str) -> str:
    """Rewritten lines keep the space the user left before their inline comment (ruamel leaves one)."""
    gaps: dict[str, str | None] = {}
    for line in original.splitlines():
        found = INLINE_COMMENT.search(line)
        if found:
            gaps[found[2]] = found[1] if found[2] not in gaps else None  # an ambiguous comment is left alone
    kept = set(original.splitlines())
    lines = []
    for line in text.splitlines(keepends=True):
        found = INLINE_COMMENT.search(line.rstrip("\n"))
        gap = gaps.get(found[2]) if found and line.rstrip("\n") not in kept else None
        lines.append(line[:found.start(1)] + gap + line[found.start(2):] if found and gap else line)
    return "".join(lines)


def _reads_as(text: str, recipe: MoeRecipe) -> bool:
    try:
        return load_moe_text(text) == recipe
    except RecipeError:
        return False


def _update_recipe(doc: CommentedMap, old: MoeRecipe, new: MoeRecipe) -> None:
    """Edit the document in place: its changed values, then its changed experts one by one."""
    values: dict[str, tuple[Any, Any]] = {}
    for field in fields(MoeRecipe):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if isinstance(after, tuple):  # a list of experts (experts, shared_experts)
            if before != after:
                _update_expert_list(doc, field.name, before, after)
        else:
            values[field.name] = (before, after)
    _update_mapping(doc, {k: v[0] for k, v in values.items() if v[0] is not None},
                    {k: v[1] for k, v in values.items() if v[1] is not None}, tuple(values))


def _update_expert_list(doc: CommentedMap, key: str, old: tuple[MoeExpert, ...], new: tuple[MoeExpert, ...]) -> None:
    seq = doc.get(key)
    if not isinstance(seq, CommentedSeq):
        doc[key] = CommentedSeq(_new_expert(expert) for expert in new)
    elif not new:
        del doc[key]
    else:
        for index, (before, after) in enumerate(zip(old, new)):
            if before != after:
                _update_mapping(seq[index], _expert_fields(before), _expert_fields(after, seq[index]), EXPERT_FIELDS)
        del seq[len(new):]
        seq.extend(_new_expert(expert) for expert in new[len(old):])


def _expert_fields(expert: MoeExpert, node: CommentedMap | None = None) -> dict[str, Any]:
    """An expert's keys, new prompts quoted like the file's; emptied prompts drop their key, unless
    the file writes them empty already (``negative_prompts: []`` is kept as the user wrote it)."""
    values: dict[str, Any] = {}
    for key in EXPERT_FIELDS:
        value = getattr(expert, key)
        written = node.get(key) if node is not None else None
        if key.endswith("_prompts") and (value or (node is not None and key in node and not written)):
            values[key] = _quoted_like(written, value)
        elif not key.endswith("_prompts") and value is not None:
            values[key] = value
    return values


def _quoted_like(seq: Any, prompts: tuple[str, ...]) -> tuple[str, ...]:
    """New prompts quoted as the list's prompts all are (``["code", "python"]`` gains ``"rust"``)."""
    if not isinstance(seq, CommentedSeq) or not seq:
        return prompts
    styles = {type(item) for item in seq}
    style = styles.pop() if len(styles) == 1 else None
    if style not in QUOTED:
        return prompts
    return tuple(p if isinstance(p, QUOTED) else style(p) for p in prompts)


def _new_expert(expert: MoeExpert) -> CommentedMap:
    """An added expert's mapping: the keys it needs, prompts in flow style as mergekit's examples write them."""
    return CommentedMap((key, fresh_node(value)) for key, value in _expert_fields(expert).items())
