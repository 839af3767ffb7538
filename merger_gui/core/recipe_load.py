"""Reading recipe YAML: bounded, with every error on its line (one document per stage).

Loading uses ruamel.yaml's round-trip mode, so anchors, aliases and merge keys resolve; the
documents it gives are both parsed into the model (:mod:`recipe_parse`) and edited in place
when a recipe is saved over its original text (:mod:`recipe_roundtrip`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode

from .errors import RecipeError
from .recipe import Recipe
from .recipe_parse import INT_TAG, node_line, parse_stage

# Real recipes are a few kB with a few hundred values. The bounds refuse hostile files (an
# alias bomb, a list of a million numbers) within a second, before anything is built from them.
MAX_RECIPE_BYTES = 1024 * 1024
MAX_RECIPE_VALUES = 20_000  # every alias counted as the values it repeats
MAX_RECIPE_DEPTH = 50
MAX_INTEGER_DIGITS = 40


def load_recipe_text(text: str) -> Recipe:
    """Parse recipe YAML (one document per stage).

    Raises:
        RecipeError: Malformed YAML or a schema error, with its 1-based line when known; a
            recipe beyond the bounds above (size, values, nesting, integer digits).
    """
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"the recipe has {len(text):,} characters, more than the {MAX_RECIPE_BYTES:,} "
                          "a recipe may have (real ones have a few thousand)")
    documents = load_documents(text)
    if any("experts" in doc and "merge_method" not in doc for doc, _ in documents):
        raise RecipeError("this is a mergekit-moe recipe (experts:): `merger-gui merge`, `validate`, "
                          "`plan`, `estimate` and the designer's Open read it; this does not", documents[0][1])
    return Recipe(tuple(parse_stage(doc, line) for doc, line in documents))


def load_recipe(path: str | Path) -> Recipe:
    """Read and parse a recipe file; see :func:`load_recipe_text`."""
    return load_recipe_text(read_recipe_text(path))


def read_recipe_text(path: str | Path) -> str:
    """The text of a recipe file: a regular file (not a FIFO or device) of at most
    :data:`MAX_RECIPE_BYTES`, in UTF-8.

    Raises:
        RecipeError: the file cannot be read, is not a regular file, or is too large.
    """
    try:
        with open(path, "rb", opener=_nonblocking_opener) as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise RecipeError(f"cannot read recipe {path}: not a regular file")
            data = stream.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is larger than {MAX_RECIPE_BYTES:,} bytes "
                              "(real ones have a few thousand)")
        return data.decode("utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"cannot read recipe {path}: not UTF-8 text (byte {exc.start})") from None


def _nonblocking_opener(path: str, flags: int) -> int:
    """Open without blocking, so that a FIFO named as the recipe is refused instead of waited on."""
    return os.open(path, flags | os.O_NONBLOCK)


def _yaml_hint(exc: MarkedYAMLError) -> str:
    """What to do about a YAML syntax error (``; indent with spaces, not tabs``), or ``""``."""
    problem, context = exc.problem or "", exc.context or ""
    opened = _mark_line(exc.context_mark)
    if "'\\t'" in problem:
        return "; indent with spaces, not tabs"
    if "quoted scalar" in context:
        return f"; the quote opened on line {opened} is never closed"
    for kind, (start, end) in (("flow sequence", "[]"), ("flow mapping", "{}")):
        if kind in context:
            return f"; separate items with commas and close the {start} opened on line {opened} with {end}"
    if "<block end>" in problem:
        return "; check the indentation: the keys of a mapping (and the items of a list) start in one column"
    if "mapping values are not allowed" in problem:
        return "; a key here or on the line above lacks its ':', or a value containing ': ' needs quotes"
    if "duplicate key" in problem:
        return "; keep one of them"
    return ""


class _BoundedComposer(Composer):
    """Composes YAML nodes while counting values (an alias as the values it repeats) and nesting.

    A recipe beyond :data:`MAX_RECIPE_VALUES`, :data:`MAX_RECIPE_DEPTH` or with an alias inside
    the value it names (a cycle) is refused here, before its nodes are turned into data.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # YAML lets an anchor be redefined; a warning would print to stderr
        self._values = 0
        self._nesting = 0
        self._sizes: dict[int, tuple[Node, int]] = {}  # id of an anchored node → (node, values)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        line = event.start_mark.line + 1
        node = self._compose_alias(event, parent, index, line) if isinstance(event, AliasEvent) else \
            self._compose_value(event, parent, index, line)
        if isinstance(parent, MappingNode) and index is None and not isinstance(node, ScalarNode):
            raise RecipeError("a key must be plain text, not a list or a mapping", line)
        return node

    def _compose_alias(self, event: AliasEvent, parent: Any, index: Any, line: int) -> Node:
        target = self.anchors.get(event.anchor)
        if target is not None:
            if id(target) not in self._sizes:
                raise RecipeError(f"alias *{event.anchor} is inside the value it names (a cycle)", line)
            self._count(self._sizes[id(target)][1], line)
        return super().compose_node(parent, index)

    def _compose_value(self, event: Any, parent: Any, index: Any, line: int) -> Node:
        start = self._values
        self._count(1, line)
        self._nesting += 1
        if self._nesting > MAX_RECIPE_DEPTH:
            raise RecipeError(f"values nest more than {MAX_RECIPE_DEPTH} levels deep (a recipe needs about 6)", line)
        node = super().compose_node(parent, index)
        self._nesting -= 1
        if event.anchor is not None:
            self._sizes[id(node)] = (node, self._values - start)
        if isinstance(node, ScalarNode) and node.tag == INT_TAG and _digits(node.value) > MAX_INTEGER_DIGITS:
            raise RecipeError(f"an integer of {_digits(node.value):,} digits is far too large for a recipe", line)
        return node

    def _count(self, values: int, line: int) -> None:
        self._values += values
        if self._values > MAX_RECIPE_VALUES:
            raise RecipeError(f"the recipe holds more than {MAX_RECIPE_VALUES:,} values (aliases counted as what "
                              "they repeat); real recipes hold a few hundred", line)


def _digits(text: str) -> int:
    return sum(c.isalnum() for c in text)


class _CheckedConstructor(RoundTripConstructor):
    """Reports a value that cannot be converted (``!!float abc``) as a RecipeError on its line."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
            kind = str(node.tag).rsplit(":", 1)[-1]
            shown = node.value if isinstance(node.value, str) and len(node.value) <= 40 else "this value"
            raise RecipeError(f"cannot read {shown!r} as {kind} ({exc})", node.start_mark.line + 1) from None

    def construct_document(self, node: Any) -> Any:
        try:
            return super().construct_document(node)
        except (ValueError, TypeError, ArithmeticError, LookupError) as exc:  # while filling a mapping or list
            raise RecipeError(f"invalid YAML: {exc}", node.start_mark.line + 1) from None


def _loader() -> YAML:
    """A round-trip YAML reader with the bounds above."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # a quoted string is written back quoted
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _CheckedConstructor
    return yaml


def load_documents(text: str) -> list[tuple[CommentedMap, int | None]]:
    """The non-empty documents of ``text`` with their first lines; each must be a mapping."""
    yaml = _loader()
    try:
        documents = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        line = _mark_line(mark)
        if line is not None:  # an error at the end of the text belongs to its last line
            line = min(line, max(1, len(text.splitlines())))
        raise RecipeError(f"invalid YAML: {problem}{_yaml_hint(exc)}", line) from exc
    except YAMLError as exc:  # a character YAML refuses (a NUL, a control character): a ReaderError
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise RecipeError(f"invalid YAML: {reason}; a recipe is UTF-8 text (is this a binary file?)", line) from exc
    loaded = [(index, doc) for index, doc in enumerate(documents) if doc is not None]
    if not loaded:
        raise RecipeError("the recipe is empty: expected keys like merge_method and slices")
    result = []
    for index, doc in loaded:
        if not isinstance(doc, CommentedMap):
            line = node_line(doc) or _document_line(text, index)
            raise RecipeError("a recipe document must be a mapping of keys like merge_method and slices", line)
        result.append((doc, node_line(doc)))
    return result


def _mark_line(mark: Any) -> int | None:
    return None if mark is None else mark.line + 1


def _document_line(text: str, index: int) -> int | None:
    """First line of the ``index``-th document (for documents without position info)."""
    nodes = list(YAML(typ="rt").compose_all(text))
    return _mark_line(nodes[index].start_mark) if index < len(nodes) else None

