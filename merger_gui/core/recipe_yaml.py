"""Read and write recipe YAML in mergekit's schema, keeping a user's file intact on save.

Loading uses ruamel.yaml's round-trip mode, so anchors, aliases and merge keys resolve
and every error names the line it comes from. Saving writes YAML that mergekit 0.1.5
(PyYAML, YAML 1.1) reads with the same meaning. Given the text of an imported file,
saving edits that file's document tree in place and copies every untouched line over
verbatim, so comments, key order, unknown keys and formatting survive.
"""

from __future__ import annotations

import io
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarfloat import ScalarFloat

from .errors import RecipeError
from .recipe import (
    EMPTY_PARAMETERS,
    FilterRule,
    ModelEntry,
    Parameters,
    ParamValue,
    Recipe,
    Scalar,
    Slice,
    SliceSource,
    Stage,
    TokenEmbedding,
    TokenizerSpec,
)

_STAGE_KEYS = (
    "name", "slices", "models", "merge_method", "base_model", "parameters", "dtype",
    "out_dtype", "tokenizer_source", "tokenizer", "chat_template",
)  # fmt: skip
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
# mergekit reads recipes with PyYAML, which follows YAML 1.1 (``on`` is a boolean there).
_YAML11 = VersionedResolver(version=(1, 1))


def _yaml11_tag(plain: str) -> str:
    """The type a YAML 1.1 reader gives ``plain`` written without quotes."""
    return str(_YAML11.resolve(ScalarNode, plain, (True, False)))


# --------------------------------------------------------------------------- loading

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
    return Recipe(tuple(_parse_stage(doc, line) for doc, line in _load_documents(text)))


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


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096  # never wrap long lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


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
        if isinstance(node, ScalarNode) and node.tag == _INT_TAG and _digits(node.value) > MAX_INTEGER_DIGITS:
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
    yaml = _yaml()
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _CheckedConstructor
    return yaml


def _load_documents(text: str) -> list[tuple[CommentedMap, int | None]]:
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
    except YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}") from exc
    loaded = [(index, doc) for index, doc in enumerate(documents) if doc is not None]
    if not loaded:
        raise RecipeError("the recipe is empty: expected keys like merge_method and slices")
    result = []
    for index, doc in loaded:
        if not isinstance(doc, CommentedMap):
            line = _node_line(doc) or _document_line(text, index)
            raise RecipeError("a recipe document must be a mapping of keys like merge_method and slices", line)
        result.append((doc, _node_line(doc)))
    return result


def _mark_line(mark: Any) -> int | None:
    return None if mark is None else mark.line + 1


def _document_line(text: str, index: int) -> int | None:
    """First line of the ``index``-th document (for documents without position info)."""
    nodes = list(YAML(typ="rt").compose_all(text))
    return _mark_line(nodes[index].start_mark) if index < len(nodes) else None


def _node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return None if lc is None or lc.line is None else lc.line + 1


def _value_line(mapping: CommentedMap, key: Any, default: int | None) -> int | None:
    """Line of ``mapping[key]``'s value (its key's for null; ``default`` for merged keys)."""
    position = (mapping.lc.data or {}).get(key)  # a mapping given by a merge key (<<) has no positions
    if not position:
        return default
    return position[0 if mapping.get(key) is None else 2] + 1


def _item_line(sequence: CommentedSeq, index: int, default: int | None) -> int | None:
    position = (sequence.lc.data or {}).get(index)
    return position[0] + 1 if position else default


def _mapping(value: Any, what: str, line: int | None) -> CommentedMap:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{what} must be a mapping of keys to values", _node_line(value) or line)
    for key in value:
        if not isinstance(key, str):
            raise RecipeError(f"{what} has a key that is not text: {key!r}", _node_line(value) or line)
    return value


def _sequence(value: Any, what: str, line: int | None) -> CommentedSeq:
    if not isinstance(value, list):
        raise RecipeError(f"{what} must be a list", _node_line(value) or line)
    return value


def _text(mapping: CommentedMap, key: str, line: int | None, required: bool = False) -> str | None:
    """``mapping[key]`` as a string; None when absent or null (an error when required)."""
    value = mapping.get(key)
    if value is None:
        if required:
            raise RecipeError(f"{key} is missing", line)
        return None
    if not isinstance(value, str):
        raise RecipeError(f"{key} must be text, not {value!r}", _value_line(mapping, key, line))
    return str(value)


def _scalar(value: Any) -> Scalar:
    """A YAML scalar as a plain Python value (ruamel's subclasses dropped)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    # An unquoted yes/no/on/off is a boolean to mergekit's YAML 1.1 reader.
    if type(value) is str and _yaml11_tag(value) == _BOOL_TAG:
        return value.lower() in ("yes", "true", "on")
    return str(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _parse_stage(doc: CommentedMap, line: int | None) -> Stage:
    _mapping(doc, "a recipe document", line)
    merge_method = _text(doc, "merge_method", line, required=True)
    has_slices, has_models = doc.get("slices") is not None, doc.get("models") is not None
    if not has_slices and not has_models:
        raise RecipeError("the recipe needs either slices or models", line)
    slices = models = None
    if has_slices:
        slices_line = _value_line(doc, "slices", line)
        items = _sequence(doc["slices"], "slices", slices_line)
        slices = tuple(_parse_slice(item, _item_line(items, i, slices_line)) for i, item in enumerate(items))
    if has_models:
        models_line = _value_line(doc, "models", line)
        items = _sequence(doc["models"], "models", models_line)
        models = tuple(_parse_model_entry(item, _item_line(items, i, models_line)) for i, item in enumerate(items))
    if slices and models:
        raise RecipeError("give either slices or models, not both", _value_line(doc, "models", line))
    if has_slices and has_models:  # one of them is an empty list: keep the other
        slices, models = (slices, None) if slices else (None, models)
    tokenizer = None
    if doc.get("tokenizer") is not None:
        tokenizer = _parse_tokenizer(doc["tokenizer"], _value_line(doc, "tokenizer", line))
    extra = tuple((key, _freeze(doc[key])) for key in doc if key not in _STAGE_KEYS)
    return Stage(
        merge_method=merge_method,
        slices=slices,
        models=models,
        base_model=_text(doc, "base_model", line),
        parameters=_parse_parameters(doc, line),
        dtype=_text(doc, "dtype", line),
        out_dtype=_text(doc, "out_dtype", line),
        tokenizer_source=_text(doc, "tokenizer_source", line),
        tokenizer=tokenizer,
        chat_template=_text(doc, "chat_template", line),
        name=_text(doc, "name", line),
        extra=Parameters(extra),
    )


def _parse_slice(value: Any, line: int | None) -> Slice:
    node = _mapping(value, "a slice", line)
    line = _node_line(node) or line
    if node.get("sources") is None:
        raise RecipeError("a slice needs sources (a list of {model, layer_range})", line)
    sources_line = _value_line(node, "sources", line)
    items = _sequence(node["sources"], "sources", sources_line)
    sources = tuple(_parse_source(item, _item_line(items, i, sources_line)) for i, item in enumerate(items))
    return Slice(sources=sources, parameters=_parse_parameters(node, line), base_model=_text(node, "base_model", line))


def _parse_source(value: Any, line: int | None) -> SliceSource:
    node = _mapping(value, "a source", line)
    line = _node_line(node) or line
    if node.get("model") is None:
        raise RecipeError("a source needs a model", line)
    layer_range = node.get("layer_range")
    range_line = _value_line(node, "layer_range", line)
    if layer_range is None:
        raise RecipeError("a source needs a layer_range like [0, 16]", line)
    if (
        not isinstance(layer_range, list)
        or len(layer_range) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in layer_range)
    ):
        raise RecipeError("layer_range must be two integers like [0, 16]", range_line)
    return SliceSource(
        model=_text(node, "model", line, required=True),
        layer_range=(int(layer_range[0]), int(layer_range[1])),
        parameters=_parse_parameters(node, line),
    )


def _parse_model_entry(value: Any, line: int | None) -> ModelEntry:
    node = _mapping(value, "a models entry", line)
    line = _node_line(node) or line
    if node.get("model") is None:
        raise RecipeError("a models entry needs a model", line)
    return ModelEntry(model=_text(node, "model", line, required=True), parameters=_parse_parameters(node, line))


def _parse_parameters(owner: CommentedMap, line: int | None) -> Parameters:
    """The ``parameters`` of ``owner`` (a stage, slice, source or model entry)."""
    if owner.get("parameters") is None:
        return EMPTY_PARAMETERS
    line = _value_line(owner, "parameters", line)
    node = _mapping(owner["parameters"], "parameters", line)
    return Parameters(
        tuple((name, _parse_value(node[name], name, _value_line(node, name, line))) for name in node)
    )


def _parse_value(value: Any, name: str, line: int | None) -> ParamValue:
    """A scalar, a gradient, or {filter, value} rules (one rule may be written as a mapping)."""
    if value is None:
        raise RecipeError(f"parameter {name} has no value", line)
    if isinstance(value, Mapping):
        return (_parse_rule(value, name, line),)
    if isinstance(value, list):
        if all(isinstance(item, Mapping) for item in value):
            return tuple(_parse_rule(item, name, _item_line(value, i, line)) for i, item in enumerate(value))
        return _parse_gradient(value, name, line)
    return _scalar(value)


def _parse_gradient(value: list, name: str, line: int | None) -> tuple[Scalar, ...]:
    for i, item in enumerate(value):
        if not _is_scalar(item):
            raise RecipeError(
                f"parameter {name} must be a number, a list of numbers or a list of {{filter, value}} rules",
                _item_line(value, i, line),
            )
    return tuple(_scalar(item) for item in value)


def _parse_rule(value: Any, name: str, line: int | None) -> FilterRule:
    node = _mapping(value, f"a rule of parameter {name}", line)
    line = _node_line(node) or line
    if node.get("value") is None:
        raise RecipeError(f"a rule of parameter {name} needs a value", line)
    rule_value = node["value"]
    value_line = _value_line(node, "value", line)
    if isinstance(rule_value, list):
        parsed: Scalar | tuple[Scalar, ...] = _parse_gradient(rule_value, name, value_line)
    elif _is_scalar(rule_value):
        parsed = _scalar(rule_value)
    else:
        raise RecipeError(f"the value of a rule of parameter {name} must be a number or a list of numbers", value_line)
    return FilterRule(value=parsed, filter=_text(node, "filter", line))


def _parse_tokenizer(value: Any, line: int | None) -> TokenizerSpec:
    node = _mapping(value, "tokenizer", line)
    pad = node.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
        raise RecipeError("pad_to_multiple_of must be an integer", _value_line(node, "pad_to_multiple_of", line))
    tokens: list[tuple[str, TokenEmbedding]] = []
    if node.get("tokens") is not None:
        tokens_line = _value_line(node, "tokens", line)
        tokens_node = _mapping(node["tokens"], "tokenizer tokens", tokens_line)
        tokens = [
            (str(token), _parse_token(tokens_node[token], token, _value_line(tokens_node, token, tokens_line)))
            for token in tokens_node
        ]
    return TokenizerSpec(
        source=_text(node, "source", line), tokens=tuple(tokens), pad_to_multiple_of=None if pad is None else int(pad)
    )


def _parse_token(value: Any, token: str, line: int | None) -> TokenEmbedding:
    node = _mapping(value, f"token {token}", line)
    force = node.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"force of token {token} must be true or false", _value_line(node, "force", line))
    source = node.get("source")
    if source is None or isinstance(source, str):
        return TokenEmbedding(source=_text(node, "source", line), force=force)
    source_line = _value_line(node, "source", line)
    source = _mapping(source, f"the source of token {token}", source_line)
    kind = _text(source, "kind", source_line, required=True)
    if kind == "zero":
        return TokenEmbedding(kind=kind, force=force)
    if kind != "model_token":
        raise RecipeError(f"the source kind of token {token} must be model_token or zero", source_line)
    token_id = source.get("token_id")
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int)):
        raise RecipeError("token_id must be an integer", _value_line(source, "token_id", source_line))
    source_token = _text(source, "token", source_line)
    if (token_id is None) == (source_token is None):
        raise RecipeError(f"the source of token {token} needs exactly one of token or token_id", source_line)
    return TokenEmbedding(
        source=_text(source, "model", source_line, required=True),
        kind=kind,
        token=source_token,
        token_id=None if token_id is None else int(token_id),
        force=force,
    )


def _freeze(value: Any) -> Any:
    """An arbitrary YAML value as a hashable one: mappings become Parameters, lists tuples."""
    if isinstance(value, Mapping):
        return Parameters(tuple((str(key), _freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return None if value is None else _scalar(value)


# --------------------------------------------------------------------------- dumping


class _Representer(RoundTripRepresenter):
    """Writes strings and floats so that YAML 1.1 readers (PyYAML, mergekit) agree with us."""

    def represent_str(self, data: str) -> ScalarNode:
        if type(data) is str and _yaml11_tag(data) != _STR_TAG:
            return self.represent_scalar(_STR_TAG, data, style="'")
        return super().represent_str(data)

    def represent_float(self, data: float) -> ScalarNode:
        text = repr(float(data))
        if math.isfinite(data) and "e" in text and "." not in text:
            mantissa, exponent = text.split("e")
            return self.represent_scalar("tag:yaml.org,2002:float", f"{mantissa}.0e{exponent}")
        return super().represent_float(data)

    def represent_scalar_float(self, data: ScalarFloat) -> ScalarNode:
        """A loaded float in its original notation, unless that notation loses precision."""
        node = super().represent_scalar_float(data)
        try:
            exact = float(node.value.replace("_", "")) == float(data)
        except ValueError:  # .inf, .nan
            exact = True
        return node if exact else self.represent_float(float(data))


_Representer.add_representer(str, _Representer.represent_str)
_Representer.add_representer(float, _Representer.represent_float)
_Representer.add_representer(ScalarFloat, _Representer.represent_scalar_float)


def dump_recipe(recipe: Recipe, original_text: str | None = None) -> str:
    """Recipe YAML that mergekit reads with the same meaning.

    Args:
        recipe: The recipe to write; each stage becomes one document.
        original_text: The text the recipe was imported from. When given (and readable),
            it is edited in place: comments, key order, unknown keys, anchors and the
            formatting of every untouched line are kept.
    """
    if original_text is not None:
        try:
            documents = _load_documents(original_text)
        except RecipeError:
            documents = None  # not a readable recipe any more: write it afresh
        if documents is not None:
            return _dump_edited(recipe, original_text, [doc for doc, _ in documents])
    return _dump_documents([_node(stage) for stage in recipe.stages])


def save_recipe(recipe: Recipe, path: str | Path, original_text: str | None = None) -> str:
    """Write :func:`dump_recipe`'s text to ``path`` atomically and return the text."""
    text = dump_recipe(recipe, original_text)
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return text


def _dump_documents(documents: Sequence[Any], explicit_start: bool = False) -> str:
    yaml = _yaml()
    yaml.explicit_start = explicit_start
    stream = io.StringIO()
    yaml.dump_all(documents, stream)
    return stream.getvalue()


def _flow(values: Iterable[Any]) -> CommentedSeq:
    seq = CommentedSeq(values)
    seq.fa.set_flow_style()
    return seq


def _stage_fields(stage: Stage) -> dict[str, Any]:
    """The keys a stage writes, in mergekit's documented order, with their model values."""
    fields: dict[str, Any] = {"name": stage.name, "slices": stage.slices, "models": stage.models}
    fields["merge_method"] = stage.merge_method
    fields["base_model"] = stage.base_model
    fields["parameters"] = stage.parameters or None
    fields.update(dtype=stage.dtype, out_dtype=stage.out_dtype, tokenizer_source=stage.tokenizer_source)
    fields.update(tokenizer=stage.tokenizer, chat_template=stage.chat_template)
    extra = {key: value for key, value in stage.extra.items() if key not in fields}
    return {**_present(fields), **extra}  # an unknown key may well be null


def _slice_fields(slice_: Slice) -> dict[str, Any]:
    parameters = slice_.parameters or None
    return _present({"sources": slice_.sources, "base_model": slice_.base_model, "parameters": parameters})


def _source_fields(source: SliceSource) -> dict[str, Any]:
    return _present({"model": source.model, "layer_range": source.layer_range, "parameters": source.parameters or None})


def _model_fields(entry: ModelEntry) -> dict[str, Any]:
    return _present({"model": entry.model, "parameters": entry.parameters or None})


def _rule_fields(rule: FilterRule) -> dict[str, Any]:
    return _present({"filter": rule.filter, "value": rule.value})


def _tokenizer_fields(spec: TokenizerSpec) -> dict[str, Any]:
    tokens = Parameters(spec.tokens) if spec.tokens else None
    return _present({"source": spec.source, "tokens": tokens, "pad_to_multiple_of": spec.pad_to_multiple_of})


def _token_fields(embedding: TokenEmbedding) -> dict[str, Any]:
    if embedding.kind is None:
        source: Any = embedding.source
    elif embedding.kind == "model_token":
        source = Parameters(
            _present({"kind": embedding.kind, "model": embedding.source, "token": embedding.token,
                      "token_id": embedding.token_id})
        )  # fmt: skip
    else:
        source = Parameters({"kind": embedding.kind})
    return _present({"source": source, "force": True if embedding.force else None})


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# How each model class is written: its fields, and the keys it owns in its mapping
# (None: every key; otherwise keys outside the tuple are the user's and are kept).
_SCHEMA: dict[type, tuple[Callable[[Any], dict[str, Any]], tuple[str, ...] | None]] = {
    Stage: (_stage_fields, None),
    Slice: (_slice_fields, ("sources", "base_model", "parameters")),
    SliceSource: (_source_fields, ("model", "layer_range", "parameters")),
    ModelEntry: (_model_fields, ("model", "parameters")),
    FilterRule: (_rule_fields, ("filter", "value")),
    TokenizerSpec: (_tokenizer_fields, ("source", "tokens", "pad_to_multiple_of")),
    TokenEmbedding: (_token_fields, ("source", "force")),
    Parameters: (lambda value: dict(value.items()), None),
}


def _node(value: Any) -> Any:
    """A fresh YAML node for a model value; lists of scalars (gradients, ranges) in flow style."""
    schema = _SCHEMA.get(type(value))
    if schema is not None:
        return CommentedMap((key, _node(item)) for key, item in schema[0](value).items())
    if isinstance(value, tuple):
        return _flow(value) if all(_is_scalar(item) for item in value) else CommentedSeq(_node(v) for v in value)
    return value


# --------------------------------------------------------------------------- editing


def _dump_edited(recipe: Recipe, original_text: str, documents: list[CommentedMap]) -> str:
    """Edit the original documents in place to match ``recipe`` and write them back."""
    explicit_start = original_text.lstrip().startswith("---")
    before = _dump_documents(documents, explicit_start)
    old_stages = tuple(_parse_stage(doc, _node_line(doc)) for doc in documents)
    _update_sequence(documents, old_stages, recipe.stages)
    after = _dump_documents(documents, explicit_start)
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
        return _plain(list(_yaml().load_all(text_a))) == _plain(list(_yaml().load_all(text_b)))
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
    schema = _SCHEMA.get(type(new))
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
    return all(_is_scalar(item) for item in old + new) or not any(_is_scalar(item) for item in old + new)


def _update_sequence(seq: list, old: Sequence[Any], new: Sequence[Any]) -> None:
    """Make ``seq`` (whose items mean ``old``) mean ``new``, touching only items that differ."""
    opcodes = SequenceMatcher(None, list(old), list(new), autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(opcodes):  # back to front keeps indices valid
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(paired):
            if not _update_node(seq[i1 + k], old[i1 + k], new[j1 + k]):
                seq[i1 + k] = _node(new[j1 + k])
        for k in reversed(range(i1 + paired, i2)):
            del seq[k]
        for k in range(j1 + paired, j2):
            seq.insert(i1 + k - j1, _node(new[k]))


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
            node[key] = _node(value)
        else:
            node.insert(_insert_position(node, order, key), key, _node(value))


def _insert_position(node: CommentedMap, order: list[str], key: str) -> int:
    """Where a new ``key`` goes among ``node``'s own keys: after those that precede it in ``order``."""
    preceding = set(order[: order.index(key)])
    own = [name for name, _ in node.non_merged_items()]
    return max((i + 1 for i, name in enumerate(own) if name in preceding), default=0)
