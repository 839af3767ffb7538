"""The layer plan: which donor layers and tensors make up every output layer and tensor.

:func:`plan_recipe` turns a recipe plus donor metadata into a :class:`Plan`. The
engine merges exactly the plan's tensors, the estimator counts them, and the GUI
draws its layers, so all three agree by construction. Planning never reads weights
and tolerates broken recipes (out-of-range layers are dropped); :mod:`validation`
says what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property

from .donor import DonorInfo, TensorInfo, with_layer_index
from .dtypes import is_float_code, known_dtype_code, promoted_dtype_code
from .errors import DonorError, RecipeError, UserError
from .methods import MethodSpec, method_spec
from .parameters import planned_slice_indices, resolve_parameter, scope_chain, slice_position
from .recipe import EMPTY_PARAMETERS, ModelEntry, Parameters, Recipe, Slice, SliceSource, Stage
from .tokenizer_vocab import stage_output_tokens

VOCAB_TENSOR_MARKERS = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


def is_vocab_tensor(name: str) -> bool:
    """Rows of this tensor are indexed by token id (embeddings, lm_head)."""
    return any(marker in name for marker in VOCAB_TENSOR_MARKERS)


def is_pre_weight(name: str) -> bool:
    """Non-layer tensors read before the layer stack (embeddings) rather than after it."""
    return "embed" in name and "lm_head" not in name and "embed_out" not in name


@dataclass(frozen=True)
class LayerSource:
    model: str
    layer: int


@dataclass(frozen=True)
class OutputLayer:
    """One layer of the merged model."""

    index: int
    slice_index: int
    position: int  # index inside its slice
    slice_length: int
    sources: tuple[LayerSource, ...]

    @property
    def x(self) -> float:
        """Gradient position of this layer inside its slice."""
        return slice_position(self.position, self.slice_length)


@dataclass(frozen=True)
class TensorSource:
    """One input of an output tensor: ``tensor`` of ``model`` with its per-model parameters."""

    model: str
    tensor: str
    parameters: Parameters = EMPTY_PARAMETERS


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor, its inputs and the parameter values that apply to it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code of the stored output
    sources: tuple[TensorSource, ...]
    layer: int | None  # output layer; None for embeddings, final norm, lm_head
    slice_index: int
    x: float
    parameters: Parameters = EMPTY_PARAMETERS  # shared parameters (t, normalize, …)
    note: str | None = None  # why a tensor was added that mergekit would not write

    @property
    def info(self) -> TensorInfo:
        """Name, shape and dtype: the tensor as the writer lays it out."""
        return TensorInfo(self.name, self.shape, self.dtype)

    @property
    def numel(self) -> int:
        return self.info.numel

    @property
    def is_vocab(self) -> bool:
        return is_vocab_tensor(self.name)


@dataclass(frozen=True)
class DonorUsage:
    """How a stage uses each layer of one donor."""

    model: str
    num_layers: int
    counts: tuple[int, ...]  # times each donor layer appears in the output

    @property
    def used_once(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.counts) if c == 1)

    @property
    def repeated(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.counts) if c > 1)

    @property
    def skipped(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.counts) if c == 0)


@dataclass(frozen=True)
class LayerMap:
    """The output layers of a stage without its tensors: all the designer draws of a plan."""

    layers: tuple[OutputLayer, ...]
    seams: tuple[int, ...]  # output layer indices where a new slice starts
    donor_usage: tuple[DonorUsage, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class StagePlan:
    index: int  # position of the stage in the recipe file
    name: str | None
    merge_method: str
    layers: tuple[OutputLayer, ...]
    tensors: tuple[PlannedTensor, ...]
    seams: tuple[int, ...]  # output layer indices where a new slice starts
    donor_usage: tuple[DonorUsage, ...]
    config_donor: str
    vocab_size: int
    output: DonorInfo  # what later stages and the estimator see of this stage's result

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def label(self) -> str:
        return self.name or f"stage {self.index + 1}"


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]  # dependency order

    @property
    def final(self) -> StagePlan:
        return self.stages[-1]


def stage_order(recipe: Recipe) -> tuple[int, ...]:
    """Indices of the recipe's stages in dependency order (a stage after those it uses).

    Raises:
        RecipeError: on duplicate stage names or a dependency cycle.
    """
    names: dict[str, int] = {}
    for i, stage in enumerate(recipe.stages):
        if stage.name:
            if stage.name in names:
                raise RecipeError(f"two stages are named {stage.name!r}")
            names[stage.name] = i
    deps = {
        i: {names[m] for m in stage.referenced_models if m in names and names[m] != i}
        for i, stage in enumerate(recipe.stages)
    }
    for stage in recipe.stages:
        if stage.name and stage.name in stage.referenced_models:
            raise RecipeError(f"stage {stage.name!r} uses its own output")
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(i: int, path: tuple[int, ...]) -> None:
        if state.get(i) == "done":
            return
        if state.get(i) == "active":
            cycle = " → ".join(recipe.stages[j].name or str(j) for j in path + (i,))
            raise RecipeError(f"stages depend on each other in a cycle: {cycle}")
        state[i] = "active"
        for d in sorted(deps[i]):
            visit(d, path + (i,))
        state[i] = "done"
        order.append(i)

    for i in range(len(recipe.stages)):
        visit(i, ())
    return tuple(order)


def stage_slices(stage: Stage, donors: Mapping[str, DonorInfo]) -> tuple[Slice, ...]:
    """The stage's slices; the ``models:`` form becomes one slice over every layer."""
    if stage.slices is not None:
        return stage.slices
    entries = list(stage.models or ())
    if stage.base_model and all(e.model != stage.base_model for e in entries):
        entries.append(ModelEntry(stage.base_model))
    sources = []
    for entry in entries:
        donor = donors.get(entry.model)
        layers = donor.num_layers if donor else 0
        sources.append(SliceSource(entry.model, (0, layers), entry.parameters))
    return (Slice(tuple(sources)),) if sources else ()


def filtered_name(output: str, source: str) -> str:
    """The name a per-model parameter's filters see for input ``source`` of tensor ``output``."""
    # A tied lm_head read from the embeddings is still the model's lm_head to its filters.
    return output if output.endswith("lm_head.weight") else source


def _evaluate(spec: MethodSpec | None, stage: Stage, slice_index: int | None, tensor: str,
              x: float, sources: tuple[tuple[str, str], ...], base: str | None
              ) -> tuple[Parameters, tuple[TensorSource, ...]]:
    """Shared and per-model parameter values of one tensor; ``slice_index`` is the recipe's."""
    if spec is None:
        return EMPTY_PARAMETERS, tuple(TensorSource(m, t) for m, t in sources)
    chain = scope_chain(stage, slice_index)
    shared = Parameters(tuple(
        (p.name, v) for p in spec.shared_parameters
        if (v := resolve_parameter(p.name, tensor, x, chain, p.default_value).value) is not None
    ))
    planned = []
    for model, name in sources:
        matched = filtered_name(tensor, name)
        model_chain = scope_chain(stage, slice_index, model)
        values = tuple(
            (p.name, v) for p in spec.model_parameters
            if not (p.non_base and model == base)
            and (v := resolve_parameter(p.name, matched, x, model_chain, p.default_value).value) is not None
        )
        planned.append(TensorSource(model, name, Parameters(values)))
    return shared, tuple(planned)


def _output_dtype(stage: Stage, input_codes: list[str], float32_result: bool = False) -> str:
    """``out_dtype``, else what mergekit stores: the working dtype (``dtype``, else the inputs'
    promoted one), widened to float32 for a method whose result is float32 (``float32_result``)."""
    out = known_dtype_code(stage.out_dtype) if stage.out_dtype else None
    if out:
        return out
    working = (known_dtype_code(stage.dtype) if stage.dtype else None) or promoted_dtype_code(input_codes)
    if float32_result and is_float_code(working):
        return promoted_dtype_code([working, "F32"])
    return working


def output_vocab_size(stage: Stage, donors: Mapping[str, DonorInfo], config_donor: DonorInfo) -> int:
    """Rows of the output's vocabulary-indexed tensors.

    With a tokenizer section this is the size of the output tokenizer, read from the donors'
    tokenizer.json like the engine does; donors without one (profiles, Hub donors not yet
    downloaded) fall back to their config's ``vocab_size``.
    """
    source = stage.effective_tokenizer_source
    if source is None:
        return config_donor.vocab_size
    try:
        size = len(stage_output_tokens(stage, donors).tokens)
    except (DonorError, UserError):
        if source == "base":
            size = (donors.get(stage.base_model or "") or config_donor).vocab_size
        elif source == "union":
            size = max((d.vocab_size for m in stage.referenced_models if (d := donors.get(m))), default=0)
        else:
            size = donors[source].vocab_size if source in donors else config_donor.vocab_size
    pad = stage.tokenizer.pad_to_multiple_of if stage.tokenizer else None
    if pad:
        size = -(-size // pad) * pad
    return size


def config_donor_name(stage: Stage) -> str | None:
    """The model whose config.json (and tokenizer) the output takes: base, else the first slice's."""
    if stage.base_model:
        return stage.base_model
    if stage.slices and stage.slices[0].sources:
        return stage.slices[0].sources[0].model
    if stage.models:
        return stage.models[0].model
    return None


def plan_stage(stage: Stage, donors: Mapping[str, DonorInfo], index: int = 0) -> StagePlan:
    """Plan one stage; every model it references must be in ``donors``.

    Raises:
        DonorError: when a referenced model is not in ``donors``.
    """
    missing = [m for m in stage.referenced_models if m not in donors]
    if missing:
        raise DonorError(f"no donor information for {', '.join(missing)}")
    spec = method_spec(stage.merge_method)
    slices = [s for s in stage_slices(stage, donors) if s.sources]
    recipe_slices = planned_slice_indices(stage)
    config_name = config_donor_name(stage) or ""
    config_donor = donors.get(config_name)
    if config_donor is None:
        raise RecipeError("the recipe has no models")
    vocab = output_vocab_size(stage, donors, config_donor)

    layer_map = plan_layers(stage, donors)
    tensors: list[PlannedTensor] = []

    def add_tensor(info: TensorInfo, out_name: str, sources: tuple[tuple[str, str], ...],
                   slice_i: int, slice_: Slice, x: float, layer: int | None, note: str | None = None) -> None:
        base = slice_.base_model or stage.base_model
        shared, planned = _evaluate(spec, stage, recipe_slices[slice_i], out_name, x, sources, base)
        shape = info.shape
        if is_vocab_tensor(out_name) and len(shape) >= 1 and stage.effective_tokenizer_source:
            shape = (vocab,) + shape[1:]
        codes = [t.dtype for m, n in sources if (t := donors[m].tensor(n)) is not None] or [info.dtype]
        widen = spec is not None and spec.float32_result and len(sources) > 1
        tensors.append(PlannedTensor(out_name, shape, _output_dtype(stage, codes, widen), planned,
                                     layer, slice_i, x, shared, note))

    # Pre-weights (embeddings) come from the first slice, at x = 0.
    if slices:
        first = slices[0]
        lead = donors[first.sources[0].model]
        for info in lead.non_layer_tensors():
            if is_pre_weight(info.name):
                srcs = tuple((s.model, info.name) for s in first.sources if donors[s.model].tensor(info.name))
                add_tensor(info, info.name, srcs, 0, first, 0.0, None)

    for layer in layer_map.layers:
        slice_ = slices[layer.slice_index]
        lead_source = slice_.sources[0]
        for info in donors[lead_source.model].layer_tensors(lead_source.start + layer.position):
            layer_srcs: list[tuple[str, str]] = []
            for s, ls in zip(slice_.sources, layer.sources):
                name = with_layer_index(info.name, ls.layer)
                if donors[s.model].tensor(name):
                    layer_srcs.append((s.model, name))
            add_tensor(info, with_layer_index(info.name, layer.index), tuple(layer_srcs),
                       layer.slice_index, slice_, layer.x, layer.index)

    # Post-weights (final norm, lm_head) come from the last slice, at x = 0.
    if slices:
        last = slices[-1]
        tail = donors[last.sources[0].model]
        post = {i.name: i for s in last.sources for i in donors[s.model].non_layer_tensors()
                if not is_pre_weight(i.name)}
        config_ties = config_donor.tie_word_embeddings
        for name, info in post.items():
            # Like mergekit, a source without lm_head (tied) gives its embeddings instead.
            srcs = tuple((s.model, src) for s in last.sources
                         if (src := _post_source(donors[s.model], name)) is not None)
            note = None
            if name.endswith("lm_head.weight") and config_ties:
                note = (f"{config_name} ties lm_head to its embeddings but the output gets its own lm_head; "
                        "the output config says tie_word_embeddings: false so it is used "
                        "(mergekit keeps true and the head is ignored at load)")
            add_tensor(info, name, srcs, len(slices) - 1, last, 0.0, None, note)
        if not any(n.endswith("lm_head.weight") for n in post) and not config_ties:
            # The last donors tie lm_head to their embeddings but the output config does not:
            # write their embeddings as lm_head so the model loads with the right head.
            embed = next((i for i in tail.non_layer_tensors() if is_pre_weight(i.name)), None)
            if embed is not None:
                srcs = tuple((s.model, embed.name) for s in last.sources if donors[s.model].tensor(embed.name))
                add_tensor(embed, "lm_head.weight", srcs, len(slices) - 1, last, 0.0, None,
                           note=f"{tail.display_name} ties lm_head to its embeddings; copied as lm_head")

    output = _output_donor(stage, index, config_donor, list(layer_map.layers), tensors, vocab)
    return StagePlan(index, stage.name, stage.merge_method, layer_map.layers, tuple(tensors), layer_map.seams,
                     layer_map.donor_usage, config_name, vocab, output)


def plan_layers(stage: Stage, donors: Mapping[str, DonorInfo]) -> LayerMap:
    """The output layers of ``stage``, by arithmetic on layer ranges (cheap enough for every mouse move).

    Raises:
        DonorError: when a referenced model is not in ``donors``.
    """
    missing = [m for m in stage.referenced_models if m not in donors]
    if missing:
        raise DonorError(f"no donor information for {', '.join(missing)}")
    layers: list[OutputLayer] = []
    seams: list[int] = []
    counts = {m: [0] * donors[m].num_layers for m in stage.referenced_models}
    for slice_i, slice_ in enumerate(s for s in stage_slices(stage, donors) if s.sources):
        length = max(0, min(s.num_layers for s in slice_.sources))
        if layers:
            seams.append(len(layers))
        for k in _in_range_positions(slice_, donors, length):
            sources = tuple(LayerSource(s.model, s.start + k) for s in slice_.sources)
            layers.append(OutputLayer(len(layers), slice_i, k, length, sources))
            for source in sources:
                counts[source.model][source.layer] += 1
    usage = tuple(DonorUsage(m, len(c), tuple(c)) for m, c in counts.items() if donors[m].num_layers)
    return LayerMap(tuple(layers), tuple(seams), usage)


def _in_range_positions(slice_: Slice, donors: Mapping[str, DonorInfo], length: int) -> range:
    """Positions ``k`` of the slice where every source's layer ``start + k`` exists.

    Out-of-range layers are left out (validation reports them) by arithmetic, so a range
    like ``[0, 1000000000]`` costs nothing.
    """
    first = max([0] + [-s.start for s in slice_.sources])
    end = min([length] + [donors[s.model].num_layers - s.start for s in slice_.sources])
    return range(first, max(first, end))


def _post_source(donor: DonorInfo, name: str) -> str | None:
    """The tensor of ``donor`` that gives post-weight ``name``: itself, or for a missing
    ``lm_head`` the tied embeddings."""
    if donor.tensor(name):
        return name
    if name.endswith("lm_head.weight"):
        return next((i.name for i in donor.non_layer_tensors() if is_pre_weight(i.name) and is_vocab_tensor(i.name)),
                    None)
    return None


def _output_donor(stage: Stage, index: int, config_donor: DonorInfo, layers: list[OutputLayer],
                  tensors: list[PlannedTensor], vocab: int) -> DonorInfo:
    infos = tuple(TensorInfo(t.name, t.shape, t.dtype) for t in tensors)
    dtype = stage.out_dtype or stage.dtype or config_donor.dtype
    config = dict(config_donor.config)
    config.update(num_hidden_layers=len(layers), vocab_size=vocab)
    sliding = None
    if config_donor.sliding_window_layers is not None:
        sliding = tuple(config_donor.sliding_window_layers[ls.layer]
                        if ls.layer < len(config_donor.sliding_window_layers) else False
                        for ls in (layer.sources[0] for layer in layers))
    return replace(
        config_donor,
        ref=stage.name or f"stage {index + 1}",
        kind="stage",
        num_layers=len(layers),
        vocab_size=vocab,
        dtype=dtype,
        tensors=infos,
        path=None,
        weight_format=None,
        sliding_window_layers=sliding,
        config=config,
        warnings=(),
        download_bytes=0,
    )


def plan_recipe(recipe: Recipe, donors: Mapping[str, DonorInfo]) -> Plan:
    """Plan every stage in dependency order; a stage's output is a donor of later stages."""
    known = dict(donors)
    stages = []
    for i in stage_order(recipe):
        stage = recipe.stages[i]
        stage_plan = plan_stage(stage, known, i)
        stages.append(stage_plan)
        if stage.name:
            known[stage.name] = stage_plan.output
    return Plan(tuple(stages))
