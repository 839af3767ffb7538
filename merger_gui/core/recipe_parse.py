"""Recipe documents (ruamel's round-trip tree) turned into the recipe model, in mergekit's schema.

Every schema error is a :class:`RecipeError` naming the line it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver

from .errors import RecipeError
from .recipe import (
    EMPTY_PARAMETERS,
    FilterRule,
    ModelEntry,
    ModuleForm,
    Parameters,
    ParamValue,
    Scalar,
    Slice,
    SliceSource,
    Stage,
    TokenEmbedding,
    TokenizerSpec,
)

_STAGE_KEYS = (
    "name", "modules", "slices", "models", "merge_method", "base_model", "parameters", "dtype",
    "out_dtype", "tokenizer_source", "tokenizer", "chat_template",
)  # fmt: skip
STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
# mergekit reads recipes with PyYAML, which follows YAML 1.1 (``on`` is a boolean there).
_YAML11 = VersionedResolver(version=(1, 1))


def yaml11_tag(plain: str) -> str:
    """The type a YAML 1.1 reader gives ``plain`` written without quotes."""
    return str(_YAML11.resolve(ScalarNode, plain, (True, False)))


def node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return None if lc is None or lc.line is None else lc.line + 1


def _value_line(mapping: CommentedMap, key: Any, default: int | None) -> int | None:
    """Line of ``mapping[key]``'s value (its key's for null; ``default`` for merged keys)."""
    position = (mapping.lc.data or {}).get(key)  # a mapping given by a merge key (<<) has no positions
    if not position:
        return default
    return position[0 if mapping.get(key) is None else 2] + 1


def _item_line(sequence: list[Any], index: int, default: int | None) -> int | None:
    lc = getattr(sequence, "lc", None)  # a CommentedSeq knows its items' lines
    position = (lc.data or {}).get(index) if lc is not None else None
    return position[0] + 1 if position else default


def _mapping(value: Any, what: str, line: int | None) -> CommentedMap:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{what} must be a mapping of keys to values", node_line(value) or line)
    for key in value:
        if not isinstance(key, str):
            raise RecipeError(f"{what} has a key that is not text: {key!r}", node_line(value) or line)
    assert isinstance(value, CommentedMap)  # the round-trip loader builds every mapping as one
    return value


def _sequence(value: Any, what: str, line: int | None) -> list[Any]:
    if not isinstance(value, list):
        raise RecipeError(f"{what} must be a list", node_line(value) or line)
    return value


def _text(mapping: CommentedMap, key: str, line: int | None) -> str | None:
    """``mapping[key]`` as a string; None when absent or null."""
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecipeError(f"{key} must be text, not {value!r}", _value_line(mapping, key, line))
    return str(value)


def _required_text(mapping: CommentedMap, key: str, line: int | None) -> str:
    """``mapping[key]`` as a string; an error when absent or null."""
    value = _text(mapping, key, line)
    if value is None:
        raise RecipeError(f"{key} is missing", line)
    return value


def _scalar(value: Any) -> Scalar:
    """A YAML scalar as a plain Python value (ruamel's subclasses dropped)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    # An unquoted yes/no/on/off is a boolean to mergekit's YAML 1.1 reader.
    if type(value) is str and yaml11_tag(value) == _BOOL_TAG:
        return value.lower() in ("yes", "true", "on")
    return str(value)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def parse_stage(doc: CommentedMap, line: int | None) -> Stage:
    _mapping(doc, "a recipe document", line)
    merge_method = _required_text(doc, "merge_method", line)
    module = None
    if doc.get("modules") is not None:
        if doc.get("slices") or doc.get("models"):
            raise RecipeError("give one of models, slices or modules, not several", _value_line(doc, "modules", line))
        module, slices, models = _parse_module(doc, line)
    else:
        slices, models = _parse_inputs(doc, line, "the recipe")
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
        module=module,
        extra=Parameters(extra),
    )


_MODULE_KEYS = ("slices", "models", "parameters")
_Slices = tuple[Slice, ...] | None
_Models = tuple[ModelEntry, ...] | None


def _parse_module(doc: CommentedMap, line: int | None) -> tuple[ModuleForm, _Slices, _Models]:
    """The one ``default`` module of the ``modules:`` form: its name, slices and models.

    mergekit's single-module architectures (every one we merge) have one module, ``default``;
    several modules, or another name, are what multi-module models (vision towers) need.
    """
    modules_line = _value_line(doc, "modules", line)
    modules = _mapping(doc["modules"], "modules", modules_line)
    names = list(modules)
    if names != ["default"]:
        raise RecipeError(
            f"modules: only the single `default` module is supported (the one module of a single-module "
            f"architecture), not {', '.join(map(repr, names)) or 'none'}", modules_line)
    body_line = _value_line(modules, "default", modules_line)
    body = _mapping(modules["default"], "the module default", body_line)
    slices, models = _parse_inputs(body, body_line, "the module default")
    extra = tuple((key, _freeze(body[key])) for key in body if key not in _MODULE_KEYS)
    return ModuleForm("default", _parse_parameters(body, body_line), Parameters(extra)), slices, models


def _parse_inputs(node: CommentedMap, line: int | None, what: str) -> tuple[_Slices, _Models]:
    """The ``slices`` or the ``models`` of a document or module (exactly one of them)."""
    has_slices, has_models = node.get("slices") is not None, node.get("models") is not None
    if not has_slices and not has_models:
        raise RecipeError(f"{what} needs either slices or models", line)
    slices: _Slices = None
    models: _Models = None
    if has_slices:
        slices_line = _value_line(node, "slices", line)
        items = _sequence(node["slices"], "slices", slices_line)
        slices = tuple(_parse_slice(item, _item_line(items, i, slices_line)) for i, item in enumerate(items))
    if has_models:
        models_line = _value_line(node, "models", line)
        items = _sequence(node["models"], "models", models_line)
        models = tuple(_parse_model_entry(item, _item_line(items, i, models_line)) for i, item in enumerate(items))
    if slices and models:
        raise RecipeError("give either slices or models, not both", _value_line(node, "models", line))
    if has_slices and has_models:  # one of them is an empty list: keep the other
        slices, models = (slices, None) if slices else (None, models)
    return slices, models


def _parse_slice(value: Any, line: int | None) -> Slice:
    node = _mapping(value, "a slice", line)
    line = node_line(node) or line
    if node.get("sources") is None:
        raise RecipeError("a slice needs sources (a list of {model, layer_range})", line)
    sources_line = _value_line(node, "sources", line)
    items = _sequence(node["sources"], "sources", sources_line)
    sources = tuple(_parse_source(item, _item_line(items, i, sources_line)) for i, item in enumerate(items))
    return Slice(sources=sources, parameters=_parse_parameters(node, line), base_model=_text(node, "base_model", line),
                 extra=_extra(node, ("sources", "base_model", "parameters")))


def _parse_source(value: Any, line: int | None) -> SliceSource:
    node = _mapping(value, "a source", line)
    line = node_line(node) or line
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
        model=_required_text(node, "model", line),
        layer_range=(int(layer_range[0]), int(layer_range[1])),
        parameters=_parse_parameters(node, line),
        extra=_extra(node, ("model", "layer_range", "parameters")),
    )


def _parse_model_entry(value: Any, line: int | None) -> ModelEntry:
    node = _mapping(value, "a models entry", line)
    line = node_line(node) or line
    if node.get("model") is None:
        raise RecipeError("a models entry needs a model", line)
    return ModelEntry(model=_required_text(node, "model", line), parameters=_parse_parameters(node, line),
                      extra=_extra(node, ("model", "parameters")))


def _extra(node: CommentedMap, known: tuple[str, ...]) -> Parameters:
    """The keys of ``node`` outside ``known``: mergekit ignores them, we keep them to warn and round-trip."""
    return Parameters(tuple((key, _freeze(node[key])) for key in node if key not in known))


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
        if not is_scalar(item):
            raise RecipeError(
                f"parameter {name} must be a number, a list of numbers or a list of {{filter, value}} rules",
                _item_line(value, i, line),
            )
    return tuple(_scalar(item) for item in value)


def _parse_rule(value: Any, name: str, line: int | None) -> FilterRule:
    node = _mapping(value, f"a rule of parameter {name}", line)
    line = node_line(node) or line
    if node.get("value") is None:
        raise RecipeError(f"a rule of parameter {name} needs a value", line)
    rule_value = node["value"]
    value_line = _value_line(node, "value", line)
    if isinstance(rule_value, list):
        parsed: Scalar | tuple[Scalar, ...] = _parse_gradient(rule_value, name, value_line)
    elif is_scalar(rule_value):
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
    kind = _required_text(source, "kind", source_line)
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
        source=_required_text(source, "model", source_line),
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


