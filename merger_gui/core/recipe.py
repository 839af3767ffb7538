"""The recipe model: immutable values mirroring mergekit's YAML schema one to one.

A :class:`Recipe` holds one or more :class:`Stage` s (a multi-document file is a
multi-stage recipe). Every class is a frozen dataclass; edits are pure functions
that return a new value (:mod:`.slice_edits`, :mod:`.stage_edits`, :mod:`.parameter_edits`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

Scalar = float | int | bool | str
# A gradient's points as written (numbers once valid: validation reports any that is not).
Gradient = tuple[Scalar, ...]


@dataclass(frozen=True)
class FilterRule:
    """One ``{filter, value}`` entry; ``filter=None`` is a fallback matching every tensor."""

    value: Scalar | Gradient
    filter: str | None = None

    def matches(self, tensor_name: str) -> bool:
        """Plain substring test, as mergekit does; ``None`` and ``"*"`` match everything."""
        return self.filter is None or self.filter == "*" or self.filter in tensor_name


ParamValue = Scalar | Gradient | tuple[FilterRule, ...]


class Parameters(Mapping[str, ParamValue]):
    """An immutable, hashable, ordered mapping of parameter name to value."""

    __slots__ = ("_items",)
    _items: tuple[tuple[str, ParamValue], ...]

    def __init__(self, items: Mapping[str, ParamValue] | tuple[tuple[str, ParamValue], ...] = ()) -> None:
        pairs = tuple(items.items()) if isinstance(items, Mapping) else tuple(items)
        object.__setattr__(self, "_items", pairs)

    def __getitem__(self, key: str) -> ParamValue:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Parameters({dict(self._items)!r})"

    def with_value(self, key: str, value: ParamValue | None) -> Parameters:
        """Return a copy with ``key`` set to ``value`` (removed when ``value`` is None)."""
        pairs = [(k, v) for k, v in self._items if k != key or value is not None]
        if value is not None:
            if key in self:
                pairs = [(k, value if k == key else v) for k, v in pairs]
            else:
                pairs.append((key, value))
        return Parameters(tuple(pairs))


EMPTY_PARAMETERS = Parameters()


@dataclass(frozen=True)
class SliceSource:
    """One model's contribution to a slice: layers ``layer_range[0] .. layer_range[1]-1``."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = EMPTY_PARAMETERS
    extra: Parameters = EMPTY_PARAMETERS  # keys mergekit ignores, kept for the round-trip and its warning

    @property
    def start(self) -> int:
        return self.layer_range[0]

    @property
    def end(self) -> int:
        return self.layer_range[1]

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


@dataclass(frozen=True)
class Slice:
    """One output slice; passthrough has one source, slerp two, other methods any number."""

    sources: tuple[SliceSource, ...]
    parameters: Parameters = EMPTY_PARAMETERS
    base_model: str | None = None
    extra: Parameters = EMPTY_PARAMETERS  # keys mergekit ignores (``residual_weight`` among them)

    @property
    def num_layers(self) -> int:
        """Output layers this slice yields (its first source's length)."""
        return self.sources[0].num_layers if self.sources else 0


@dataclass(frozen=True)
class ModelEntry:
    """An entry of the ``models:`` form: every layer of ``model``."""

    model: str
    parameters: Parameters = EMPTY_PARAMETERS
    extra: Parameters = EMPTY_PARAMETERS  # keys mergekit ignores


@dataclass(frozen=True)
class ModuleForm:
    """How a stage written as ``modules: {name: {slices|models, parameters}}`` names its module.

    The stage's ``slices`` / ``models`` are the module's; ``parameters`` rank between the
    slices' and the stage's own, as mergekit's ConfigReader orders them.
    """

    name: str = "default"
    parameters: Parameters = EMPTY_PARAMETERS
    extra: Parameters = EMPTY_PARAMETERS  # keys mergekit ignores


@dataclass(frozen=True)
class TokenEmbedding:
    """One ``tokenizer.tokens`` entry: where the embedding of a token comes from.

    ``kind`` is None when ``source`` is written as a plain model reference (or is absent),
    ``"model_token"`` for the row of ``token`` / ``token_id`` in model ``source``, and
    ``"zero"`` for a zero row.
    """

    source: str | None = None
    kind: str | None = None
    token: str | None = None
    token_id: int | None = None
    force: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    """The ``tokenizer:`` form; ``source`` is ``base``, ``union`` or a model reference.

    ``source=None`` means the key was not written; mergekit then uses ``union``.
    """

    source: str | None = None
    tokens: tuple[tuple[str, TokenEmbedding], ...] = ()
    pad_to_multiple_of: int | None = None


@dataclass(frozen=True)
class Stage:
    """One merge: a single YAML document (``name`` set in multi-stage files)."""

    merge_method: str
    slices: tuple[Slice, ...] | None = None
    models: tuple[ModelEntry, ...] | None = None
    base_model: str | None = None
    parameters: Parameters = EMPTY_PARAMETERS
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    name: str | None = None
    module: ModuleForm | None = None  # set when written in the ``modules:`` form
    extra: Parameters = EMPTY_PARAMETERS
    """Unknown top-level keys, kept so a round-trip does not lose them (nested mappings as
    :class:`Parameters`, lists as tuples)."""

    @property
    def referenced_models(self) -> tuple[str, ...]:
        """Every model reference of the stage, in order of first appearance."""
        seen: dict[str, None] = {}
        for slice_ in self.slices or ():
            for source in slice_.sources:
                seen.setdefault(source.model, None)
            if slice_.base_model:
                seen.setdefault(slice_.base_model, None)
        for entry in self.models or ():
            seen.setdefault(entry.model, None)
        if self.base_model:
            seen.setdefault(self.base_model, None)
        return tuple(seen)

    @property
    def effective_tokenizer_source(self) -> str | None:
        if self.tokenizer is not None:
            return self.tokenizer.source or "union"
        return self.tokenizer_source


@dataclass(frozen=True)
class Recipe:
    """A whole recipe file: one stage, or several in dependency-free file order."""

    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @property
    def is_multi_stage(self) -> bool:
        return len(self.stages) > 1

    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if s.name)

    def replace_stage(self, index: int, stage: Stage) -> Recipe:
        stages = list(self.stages)
        stages[index] = stage
        return replace(self, stages=tuple(stages))
