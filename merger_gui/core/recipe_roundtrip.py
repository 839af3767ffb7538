"""Saving over a user's file: the imported documents edited in place to mean the new recipe.

Every untouched line is copied over verbatim, so comments, key order, unknown keys, anchors
and formatting survive; changed lines take the user's indentation where the file shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from .recipe import Recipe
from .recipe_dump import SCHEMA, dump_documents, fresh_node, round_trip_yaml
from .recipe_parse import is_scalar, node_line, parse_stage


def edit_documents(recipe: Recipe, original_text: str, documents: list[CommentedMap]) -> str:
    """Edit the original documents in place to match ``recipe`` and write them back."""
    explicit_start = original_text.lstrip().startswith("---")
    before = dump_documents(documents, explicit_start)
    old_stages = tuple(parse_stage(doc, node_line(doc)) for doc in documents)
    _update_sequence(documents, old_stages, recipe.stages)
    after = dump_documents(documents, explicit_start)
    spliced = _splice_lines(original_text, before, after)
    if spliced != after and not _same_documents(spliced, after):
        return after  # the user's indentation cannot host the new lines: use ruamel's
    return spliced


def _splice_lines(original: str, before: str, after: str) -> str:
    """``after`` with every line that did not change since ``before`` copied from ``original``.

    ``before`` is ruamel's rewrite of ``original``: the same lines up to spacing. Changed
    lines take the user's indentation for their depth where the document shows it.
    """
    original_lines = original.splitlines(keepends=True)
    before_lines = before.splitlines(keepends=True)
    after_lines = after.splitlines(keepends=True)
    if len(original_lines) != len(before_lines) or any(
        a.split() != b.split() for a, b in zip(original_lines, before_lines)
    ):
        return after
    indenter = _Indenter(original_lines, before_lines)
    out: list[str] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, before_lines, after_lines, autojunk=False).get_opcodes():
        if tag == "equal":
            out.extend(original_lines[i1:i2])
        else:  # a changed line takes the indentation of the user's line it replaces, or of its neighbours
            near = [min(i1 + k, max(i1, i2 - 1)) for k in range(j2 - j1)]
            out.extend(indenter.reindent(line, i) for line, i in zip(after_lines[j1:j2], near))
    return "".join(out)


class _Indenter:
    """Maps ruamel's indentation to the user's, learnt from the nearest line at the same depth."""

    def __init__(self, original_lines: list[str], before_lines: list[str]) -> None:
        self._original = original_lines
        self._before = before_lines
        document, self._document = 0, []
        for line in before_lines:
            document += line.startswith("---")
            self._document.append(document)

    def reindent(self, line: str, near: int) -> str:
        """``line`` (ruamel's) re-indented like the user's line nearest to index ``near``."""
        if not line.strip() or not self._before:
            return line
        near = min(near, len(self._before) - 1)
        indent = _indent(line)
        for distance in range(len(self._before)):
            for i in (near - distance, near + distance + 1):
                if (
                    0 <= i < len(self._before)
                    and self._document[i] == self._document[near]
                    and self._before[i].strip()
                    and _indent(self._before[i]) == indent
                ):
                    return " " * _indent(self._original[i]) + line.lstrip(" ")
        return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _same_documents(text_a: str, text_b: str) -> bool:
    try:
        return _plain(list(round_trip_yaml().load_all(text_a))) == _plain(list(round_trip_yaml().load_all(text_b)))
    except YAMLError:
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [(key, _plain(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _is_shared(node: Any) -> bool:
    """Whether ``node`` carries an anchor, so editing it in place would change its aliases too."""
    anchor = getattr(node, "anchor", None)
    return anchor is not None and anchor.value is not None


def _update_node(node: Any, old: Any, new: Any) -> bool:
    """Edit ``node`` (which means ``old``) to mean ``new``; False when it must be replaced instead."""
    if _is_shared(node) or type(old) is not type(new):
        return False
    schema = SCHEMA.get(type(new))
    if schema is not None and isinstance(node, CommentedMap):
        fields, owned = schema
        _update_mapping(node, fields(old), fields(new), owned)
        return True
    if isinstance(node, CommentedSeq) and isinstance(new, tuple) and _same_kind(old, new):
        _update_sequence(node, old, new)
        return True
    return False


def _same_kind(old: tuple, new: tuple) -> bool:
    """Both lists of scalars (a gradient, a range) or both lists of structured values."""
    return all(is_scalar(item) for item in old + new) or not any(is_scalar(item) for item in old + new)


def _update_sequence(seq: list, old: Sequence[Any], new: Sequence[Any]) -> None:
    """Make ``seq`` (whose items mean ``old``) mean ``new``, touching only items that differ."""
    opcodes = SequenceMatcher(None, list(old), list(new), autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(opcodes):  # back to front keeps indices valid
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(paired):
            if not _update_node(seq[i1 + k], old[i1 + k], new[j1 + k]):
                seq[i1 + k] = fresh_node(new[j1 + k])
        for k in reversed(range(i1 + paired, i2)):
            del seq[k]
        for k in range(j1 + paired, j2):
            seq.insert(i1 + k - j1, fresh_node(new[k]))


def _update_mapping(node: CommentedMap, old: dict[str, Any], new: dict[str, Any], owned: Iterable[str] | None) -> None:
    """Make ``node`` mean ``new`` (it meant ``old``); keys outside ``owned`` are left alone."""
    owned_keys = None if owned is None else set(owned)
    for key in [key for key, _ in node.non_merged_items()]:
        if key not in new and (owned_keys is None or key in owned_keys):
            del node[key]
    order = list(new)
    for key, value in new.items():
        if key in old and old[key] == value:
            continue
        if key in old and key in node and _update_node(node[key], old[key], value):
            continue
        if key in node:
            node[key] = fresh_node(value)
        else:
            node.insert(_insert_position(node, order, key), key, fresh_node(value))


def _insert_position(node: CommentedMap, order: list[str], key: str) -> int:
    """Where a new ``key`` goes among ``node``'s own keys: after those that precede it in ``order``."""
    preceding = set(order[: order.index(key)])
    own = [name for name, _ in node.non_merged_items()]
    return max((i + 1 for i, name in enumerate(own) if name in preceding), default=0)
