"""Writing the recipe model as fresh YAML that mergekit 0.1.5 (PyYAML, YAML 1.1) reads with the same meaning."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarfloat import ScalarFloat

from .recipe import (
    EMPTY_PARAMETERS, FilterRule, ModelEntry, Parameters, Slice, SliceSource, Stage, TokenEmbedding, TokenizerSpec,
)
from .recipe_parse import STR_TAG, is_scalar, yaml11_tag


def round_trip_yaml() -> YAML:
    """The ruamel instance that writes recipes (and compares texts in :mod:`recipe_roundtrip`)."""
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096  # never wrap long lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


class _Representer(RoundTripRepresenter):
    """Writes strings and floats so that YAML 1.1 readers (PyYAML, mergekit) agree with us."""

    def represent_str(self, data: str) -> ScalarNode:
        if type(data) is str and yaml11_tag(data) != STR_TAG:
            return self.represent_scalar(STR_TAG, data, style="'")
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


def dump_documents(documents: Sequence[Any], explicit_start: bool = False) -> str:
    yaml = round_trip_yaml()
    yaml.explicit_start = explicit_start
    stream = io.StringIO()
    yaml.dump_all(documents, stream)
    return stream.getvalue()


def _flow(values: Iterable[Any]) -> CommentedSeq:
    seq = CommentedSeq(values)
    seq.fa.set_flow_style()
    return seq


@dataclass(frozen=True)
class _ModuleBody:
    """One module of the ``modules:`` form as written: its slices or models and parameters."""

    slices: tuple[Slice, ...] | None
    models: tuple[ModelEntry, ...] | None
    parameters: Parameters = EMPTY_PARAMETERS
    extra: Parameters = EMPTY_PARAMETERS


@dataclass(frozen=True)
class _Tokens:
    """The ``tokenizer.tokens`` mapping: each token and where its embedding comes from."""

    entries: tuple[tuple[str, TokenEmbedding], ...]


@dataclass(frozen=True)
class _Modules:
    """The ``modules:`` mapping: the one module's name and body."""

    name: str
    body: _ModuleBody


def _stage_fields(stage: Stage) -> dict[str, Any]:
    """The keys a stage writes, in mergekit's documented order, with their model values."""
    fields: dict[str, Any] = {"name": stage.name, "slices": stage.slices, "models": stage.models}
    if stage.module is not None:
        module = stage.module
        body = _ModuleBody(stage.slices, stage.models, module.parameters, module.extra)
        fields = {"name": stage.name, "modules": _Modules(module.name, body)}
    fields["merge_method"] = stage.merge_method
    fields["base_model"] = stage.base_model
    fields["parameters"] = stage.parameters or None
    fields.update(dtype=stage.dtype, out_dtype=stage.out_dtype, tokenizer_source=stage.tokenizer_source)
    fields.update(tokenizer=stage.tokenizer, chat_template=stage.chat_template)
    extra = {key: value for key, value in stage.extra.items() if key not in fields}
    return {**_present(fields), **extra}  # an unknown key may well be null


def _module_fields(body: _ModuleBody) -> dict[str, Any]:
    fields = {"slices": body.slices, "models": body.models, "parameters": body.parameters or None}
    return {**_present(fields), **dict(body.extra.items())}


def _slice_fields(slice_: Slice) -> dict[str, Any]:
    parameters = slice_.parameters or None
    fields = {"sources": slice_.sources, "base_model": slice_.base_model, "parameters": parameters}
    return {**_present(fields), **dict(slice_.extra.items())}


def _source_fields(source: SliceSource) -> dict[str, Any]:
    fields = {"model": source.model, "layer_range": source.layer_range, "parameters": source.parameters or None}
    return {**_present(fields), **dict(source.extra.items())}


def _model_fields(entry: ModelEntry) -> dict[str, Any]:
    return {**_present({"model": entry.model, "parameters": entry.parameters or None}), **dict(entry.extra.items())}


def _rule_fields(rule: FilterRule) -> dict[str, Any]:
    return _present({"filter": rule.filter, "value": rule.value})


def _tokenizer_fields(spec: TokenizerSpec) -> dict[str, Any]:
    tokens = _Tokens(spec.tokens) if spec.tokens else None
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
SCHEMA: dict[type, tuple[Callable[[Any], dict[str, Any]], tuple[str, ...] | None]] = {
    Stage: (_stage_fields, None),
    _Modules: (lambda modules: {modules.name: modules.body}, None),
    _ModuleBody: (_module_fields, ("slices", "models", "parameters")),
    Slice: (_slice_fields, ("sources", "base_model", "parameters")),
    SliceSource: (_source_fields, ("model", "layer_range", "parameters")),
    ModelEntry: (_model_fields, ("model", "parameters")),
    FilterRule: (_rule_fields, ("filter", "value")),
    TokenizerSpec: (_tokenizer_fields, ("source", "tokens", "pad_to_multiple_of")),
    TokenEmbedding: (_token_fields, ("source", "force")),
    _Tokens: (lambda tokens: dict(tokens.entries), None),
    Parameters: (lambda value: dict(value.items()), None),
}


def fresh_node(value: Any) -> Any:
    """A fresh YAML node for a model value; lists of scalars (gradients, ranges) in flow style."""
    schema = SCHEMA.get(type(value))
    if schema is not None:
        return CommentedMap((key, fresh_node(item)) for key, item in schema[0](value).items())
    if isinstance(value, tuple):
        return _flow(value) if all(is_scalar(item) for item in value) else CommentedSeq(fresh_node(v) for v in value)
    return value
