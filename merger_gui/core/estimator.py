"""Size and memory of a planned merge, of each stage and of its donors, before any download.

Every figure is in bytes; :func:`units.format_size` shows them in GiB (2^30 bytes) or MiB.
The estimate works on a :class:`DonorInfo` — a donor, or the ``output`` of a planned stage — so a recipe's
result and its donors are measured the same way:

- parameters and file sizes are summed over the exact (planned) tensor list;
- weights in a float dtype, a GGUF mixture or EXL2 come from :mod:`quantization`;
- the KV cache is ``Σ_layers 2 · n_kv · head_dim · cells · element size · batch``, with
  sliding-window layers holding only their window;
- compute buffer and runtime overhead are labelled terms from a runtime preset
  (:mod:`runtime_presets`), each overridable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

from .donor import DonorInfo
from .dtypes import BY_CODE, known_dtype_code
from .errors import UserError
from .methods import method_spec
from .plan import Plan, PlannedTensor, StagePlan
from .quantization import (
    GGML_TYPES, GGMLType, STORED, WeightFormat, host_embedding_bytes, parse_weight_format, weight_bytes,
)
from .runtime_presets import RuntimePreset, runtime_preset
from .units import GIB, MIB, format_size

if TYPE_CHECKING:
    from .moe_recipe import MoeRecipe

GIB_NOTE = "GiB = 2^30 bytes, MiB = 2^20 bytes"
COPY_ENGINE_BYTES = 28 * MIB  # Python and the engine copying bytes file to file (no torch; measured 19 MiB)
TORCH_ENGINE_BYTES = 240 * MIB  # Python, torch and the engine (measured 233 MiB with the CPU build of torch 2)
HEAP_BLOCK_LIMIT = 32 * MIB  # glibc's largest mmap threshold: smaller blocks stay in the heap once freed
HEAP_RESIDUE_FACTOR = 3  # heap kept of freed blocks, in footprints of the largest heap-sized tensor
MAX_CONTEXT_LIMIT = 2**27  # search bound for max_context; larger answers are "unbounded"

KV_CACHE_TYPES = {
    "f32": GGML_TYPES["F32"], "f16": GGML_TYPES["F16"], "bf16": GGML_TYPES["BF16"],
    "fp8": GGMLType("FP8", 1, 1),
    "q8_0": GGML_TYPES["Q8_0"], "q4_0": GGML_TYPES["Q4_0"], "q4_1": GGML_TYPES["Q4_1"],
    "q5_0": GGML_TYPES["Q5_0"], "q5_1": GGML_TYPES["Q5_1"], "iq4_nl": GGML_TYPES["IQ4_NL"],
}
_KV_ALIASES = {"fp16": "f16", "float16": "f16", "half": "f16", "bfloat16": "bf16", "fp32": "f32",
               "float32": "f32", "float": "f32", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "f8": "fp8"}
# File sizes shown for every model, in this order.
SIZE_TABLE_FORMATS = ("fp32", "fp16", "fp8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K",
                      "IQ4_XS")


def kv_cache_type(name: str) -> GGMLType:
    """Element type of a KV cache: f16, bf16, f32, fp8, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl.

    Raises:
        UserError: for an unknown cache type.
    """
    key = name.strip().lower()
    key = _KV_ALIASES.get(key, key)
    if key not in KV_CACHE_TYPES:
        raise UserError(f"unknown KV cache type {name!r} (known: {', '.join(KV_CACHE_TYPES)})")
    return KV_CACHE_TYPES[key]


@dataclass(frozen=True)
class EstimateOptions:
    """What to estimate for; validated on construction.

    Attributes:
        context: Tokens per sequence.
        batch: Sequences held at once.
        weights: Weight format (``stored``, ``fp16``, ``Q4_K_M``, ``exl2:4.65``…).
        kv_dtype: KV cache element type.
        runtime: Runtime preset name.
        gpu_memory_bytes: Budget for :attr:`Estimate.max_context`; None skips the solve.
        compute_buffer_bytes: Replaces the preset's compute buffer when given.
        overhead_bytes: Replaces the preset's runtime overhead when given.
        sliding_window: Let sliding-window layers hold only their window where the runtime
            exploits it (llama.cpp only for Gemma-2).
    """

    context: int = 4096
    batch: int = 1
    weights: str = "stored"
    kv_dtype: str = "f16"
    runtime: str = "llama.cpp"
    gpu_memory_bytes: int | None = None
    compute_buffer_bytes: int | None = None
    overhead_bytes: int | None = None
    sliding_window: bool = True

    def __post_init__(self) -> None:
        if self.context < 1:
            raise UserError(f"context must be at least 1 token, not {self.context}")
        if self.batch < 1:
            raise UserError(f"batch must be at least 1, not {self.batch}")
        for label, value in (("GPU memory", self.gpu_memory_bytes), ("compute buffer", self.compute_buffer_bytes),
                             ("overhead", self.overhead_bytes)):
            if value is not None and value < 0:
                raise UserError(f"{label} cannot be negative")
        parse_weight_format(self.weights)
        kv_cache_type(self.kv_dtype)
        runtime_preset(self.runtime)

    @property
    def weight_format(self) -> WeightFormat:
        """The parsed :attr:`weights`."""
        return parse_weight_format(self.weights)

    @property
    def preset(self) -> RuntimePreset:
        """The :attr:`runtime`'s preset."""
        return runtime_preset(self.runtime)


def windowed_layers(model: DonorInfo) -> tuple[bool, ...]:
    """Per layer: does it attend over a sliding window only?

    A ``sliding_window`` without a per-layer pattern applies to every layer (Mistral v0.1);
    Qwen2's ``use_sliding_window: false`` switches it off.
    """
    if model.sliding_window is None or model.config.get("use_sliding_window") is False:
        return (False,) * model.num_layers
    if model.sliding_window_layers is not None:
        pattern = tuple(model.sliding_window_layers)
        return (pattern + (False,) * model.num_layers)[:model.num_layers]
    return (True,) * model.num_layers


@dataclass(frozen=True)
class KVCache:
    """KV cache of one model at one context and batch."""

    kv_type: str
    bytes_per_token: int  # every layer holding the token, one sequence
    full_bytes: int  # every layer holds every position
    windowed_bytes: int  # sliding-window layers hold only their window
    windowed_layer_count: int


def kv_cache(model: DonorInfo, context: int, batch: int = 1, kv_dtype: str = "f16",
             window_margin: int = 0) -> KVCache:
    """KV cache bytes: ``Σ_layers 2 · row(n_kv · head_dim) · cells · batch``.

    ``row`` is the bytes of ``n_kv · head_dim`` elements of the cache type (block-quantised
    types store 34 or 18 bytes per 32 elements). A windowed layer holds
    ``min(context, sliding_window + window_margin)`` cells.
    """
    kind = kv_cache_type(kv_dtype)
    per_layer = 2 * kind.row_bytes(model.num_kv_heads * model.head_dim)
    windowed = windowed_layers(model)
    window = max(1, (model.sliding_window or 0) + window_margin)
    cells = sum(min(context, window) if w else context for w in windowed)
    return KVCache(
        kv_type=kv_dtype,
        bytes_per_token=per_layer * model.num_layers,
        full_bytes=per_layer * model.num_layers * context * batch,
        windowed_bytes=per_layer * cells * batch,
        windowed_layer_count=sum(windowed),
    )


@dataclass(frozen=True)
class Estimate:
    """Size and GPU memory of one model (a donor or a stage's output) for one set of options."""

    name: str
    num_layers: int
    params: int
    weights_label: str
    weights_bytes: int  # all weights in the chosen format
    host_weights_bytes: int  # part of them the runtime keeps in system RAM
    kv: KVCache
    kv_cache_bytes: int  # the KV figure counted in the total
    kv_counts_window: bool  # kv_cache_bytes is the windowed figure
    compute_label: str
    compute_buffer_bytes: int
    overhead_label: str
    overhead_bytes: int
    total_bytes: int
    max_context: int | None  # None: no budget given, or no limit below MAX_CONTEXT_LIMIT
    trained_context: int | None  # the model's max_position_embeddings, when its config says
    file_sizes: tuple[tuple[str, int], ...]  # (format, bytes) for SIZE_TABLE_FORMATS
    stored_bytes: int  # file size in the planned / stored dtypes
    options: EstimateOptions = field(compare=False)


def _kv(model: DonorInfo, options: EstimateOptions, context: int) -> KVCache:
    return kv_cache(model, context, options.batch, options.kv_dtype, options.preset.window_margin)


def _counts_window(model: DonorInfo, options: EstimateOptions) -> bool:
    return options.sliding_window and options.preset.exploits_window(model)


def _counted_kv(kv: KVCache, windowed: bool) -> int:
    return kv.windowed_bytes if windowed else kv.full_bytes


def _compute_bytes(model: DonorInfo, options: EstimateOptions, context: int) -> int:
    if options.compute_buffer_bytes is not None:
        return options.compute_buffer_bytes
    return options.preset.compute_buffer_bytes(model, context, options.batch)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def solve_max_context(total_at: Callable[[int], int], budget: int, limit: int = MAX_CONTEXT_LIMIT) -> int | None:
    """Largest context ``c`` with ``total_at(c) <= budget`` (``total_at`` non-decreasing).

    Returns 0 when not even one token fits, None when ``limit`` tokens still fit.
    """
    if total_at(1) > budget:
        return 0
    if total_at(limit) <= budget:
        return None
    low, high = 1, limit  # total_at(low) <= budget < total_at(high)
    while high - low > 1:
        mid = (low + high) // 2
        if total_at(mid) <= budget:
            low = mid
        else:
            high = mid
    return low


def estimate_model(model: DonorInfo, options: EstimateOptions = EstimateOptions()) -> Estimate:
    """Estimate parameters, file sizes and GPU memory of ``model`` (a donor or a stage output)."""
    fmt = options.weight_format
    preset = options.preset
    weights = weight_bytes(model, fmt)
    host = host_embedding_bytes(model, fmt) if preset.embeddings_on_host else 0
    overhead = options.overhead_bytes if options.overhead_bytes is not None else preset.overhead_bytes(weights)
    windowed = _counts_window(model, options)

    def total_at(context: int) -> int:
        kv = _counted_kv(_kv(model, options, context), windowed)
        return weights - host + kv + _compute_bytes(model, options, context) + overhead

    kv = _kv(model, options, options.context)
    max_context = None
    if options.gpu_memory_bytes is not None:
        max_context = solve_max_context(total_at, options.gpu_memory_bytes)
    return Estimate(
        name=model.display_name,
        num_layers=model.num_layers,
        params=model.param_count,
        weights_label=fmt.label,
        weights_bytes=weights,
        host_weights_bytes=host,
        kv=kv,
        kv_cache_bytes=_counted_kv(kv, windowed),
        kv_counts_window=windowed,
        compute_label=preset.compute_label if options.compute_buffer_bytes is None else "compute buffer (set)",
        compute_buffer_bytes=_compute_bytes(model, options, options.context),
        overhead_label=preset.overhead_label if options.overhead_bytes is None else "runtime overhead (set)",
        overhead_bytes=overhead,
        total_bytes=total_at(options.context),
        max_context=max_context,
        trained_context=_int_or_none(model.config.get("max_position_embeddings")),
        file_sizes=tuple((f, weight_bytes(model, parse_weight_format(f))) for f in SIZE_TABLE_FORMATS),
        stored_bytes=weight_bytes(model, STORED),
        options=options,
    )


@dataclass(frozen=True)
class DonorComparison:
    """A donor's own estimate and how much more (or less) the merge's final output needs."""

    name: str
    estimate: Estimate
    delta_bytes: int  # final output total minus this donor's total

    def describe(self) -> str:
        """``+4.20 GiB vs Thorns-13B at 4k``."""
        delta = format_size(self.delta_bytes, 2, signed=True)
        return f"{delta} vs {self.name} at {format_context(self.estimate.options.context)}"


@dataclass(frozen=True)
class MergeResources:
    """What the merge itself needs: downloads, disk and the engine's peak RAM."""

    download_bytes: int  # donor weights not yet in the local Hub cache
    output_disk_bytes: int  # the final output's weights
    intermediate_disk_bytes: int  # outputs of earlier stages of a multi-stage recipe
    peak_ram_bytes: int

    @property
    def disk_bytes(self) -> int:
        return self.output_disk_bytes + self.intermediate_disk_bytes


@dataclass(frozen=True)
class RecipeEstimate:
    """Estimates of every stage (dependency order), donor comparisons and merge-time needs."""

    stages: tuple[Estimate, ...]
    stage_labels: tuple[str, ...]
    donors: tuple[DonorComparison, ...]
    merge: MergeResources

    @property
    def final(self) -> Estimate:
        return self.stages[-1]


@dataclass(frozen=True)
class Scratch:
    """Bytes per element a merge method holds beside its ``k`` inputs at one step::

        k · (per_input · w + per_input_bytes) + working · w + draws · d + fixed

    ``w`` is the working dtype's element size and ``d`` that of the dtype DARE draws its masks
    in (float32, as CPU ``bernoulli`` has no float16 kernel, but bfloat16 for bfloat16). The
    ``…bytes`` terms are float32, int64 and bool temporaries whatever the working dtype.
    """

    per_input: float = 0
    per_input_bytes: float = 0
    working: float = 0
    draws: float = 0
    fixed: float = 0

    def bytes_per_element(self, k: int, w: int, d: int) -> float:
        return k * (self.per_input * w + self.per_input_bytes) + self.working * w + self.draws * d + self.fixed


# One delta sparsified by magnitude (TIES, breadcrumbs, DELLA's ranks): the deltas so far, float32
# magnitudes, the sort's values, int64 indices and buffer, the mask.
SORTED_SPARSIFY = Scratch(per_input=1, fixed=23)
RANDOM_SPARSIFY = Scratch(per_input=1, draws=4)  # DARE: the deltas so far, the draws, a rescaled copy
SIGN_ELECTION = Scratch(per_input=2, per_input_bytes=1, working=1)  # TIES: deltas, their mask, bool signs
# The most each method holds beside its inputs (the larger of its steps), measured with
# benchmarks/bench_memory.py for 2-16 inputs in 2- and 4-byte dtypes.
METHOD_SCRATCH: dict[str, tuple[Scratch, ...]] = {
    "passthrough": (Scratch(),),  # the input is the result
    "slerp": (Scratch(working=1),),  # the result; float32 chunks of bounded size
    "linear": (Scratch(fixed=8),),  # the float32 sum and a float32 copy of one input
    "task_arithmetic": (Scratch(per_input=1, working=1),),  # the deltas, their sum
    "ties": (SORTED_SPARSIFY, SIGN_ELECTION),
    "dare_ties": (RANDOM_SPARSIFY, SIGN_ELECTION),
    "dare_linear": (RANDOM_SPARSIFY,),
    "breadcrumbs": (SORTED_SPARSIFY,),
    "breadcrumbs_ties": (SORTED_SPARSIFY, SIGN_ELECTION),
    "della": (SORTED_SPARSIFY, SIGN_ELECTION),
    "della_linear": (SORTED_SPARSIFY,),
    "sce": (Scratch(per_input=1, per_input_bytes=7, working=2),),  # top-k of variances, float32 energies
    "model_stock": (Scratch(per_input=1, working=3),),  # offsets, their average, the interpolation
    "nuslerp": (Scratch(working=6),),  # two task vectors, unit vectors, the interpolation
    "multislerp": (Scratch(per_input=3),),  # offsets, unit vectors, tangents
    "karcher": (Scratch(per_input=1, working=4, fixed=6),),  # unit inputs, mean, step; float32 norms
    "nearswap": (Scratch(working=5),),  # distance, weight, the blend
    "arcee_fusion": (Scratch(working=2, fixed=13),),  # float32 importance, mask and result; quantile sample
    "ram": (Scratch(per_input=4, per_input_bytes=1, fixed=2),),  # masked deltas, overlap means, counts
    "ramplus_tl": (Scratch(per_input=1, per_input_bytes=13),),  # as RAM, with float32 boosted deltas
}


def stage_peak_ram_bytes(stage: StagePlan, donors: Mapping[str, DonorInfo]) -> int:
    """The streaming engine's peak RAM for one stage (measured with benchmarks/bench_memory.py).

    A passthrough that only copies bytes (no ``scale``, no dtype change) stays flat at
    ``COPY_ENGINE_BYTES``. Otherwise the engine merges one output tensor at a time. For one of
    ``numel`` elements from ``k`` inputs it holds the inputs in the working dtype (``w`` bytes
    each) and, on top of them, the largest of:

    - ``s``: the input being read in its stored dtype, when that is not the working dtype (with
      the float32 sum and delta of a MODEL+LORA donor's adapter: ``s + 8``);
    - the method's scratch at its fullest (:data:`METHOD_SCRATCH`; every known method's when
      the method is unknown);
    - ``r + o``: the result (``w`` bytes, float32 for methods with a float32 result, none when
      it is the input) and its copy in the output dtype (``o``) when that differs.

    The C allocator keeps freed blocks under glibc's largest mmap threshold (32 MiB) in the
    process: up to about three footprints of the largest tensor whose working copies are that
    small, and at least a byte per element of the largest tensor. With torch's own memory::

        footprint = numel · (k·w + max(s, scratch, r + o))
        TORCH_ENGINE_BYTES + max footprint + max(largest numel, 3 · max footprint under 32 MiB)

    ``w`` is the planned output dtype's size, or the stage's ``dtype`` for methods that widen
    their result to float32 (with ``out_dtype`` set it is ``out_dtype``'s: an approximation).
    ``donors`` gives the source tensors' stored dtypes (stage outputs included).
    """
    if _copies_bytes_only(stage, donors):
        return COPY_ENGINE_BYTES
    peak = heap_peak = largest = 0.0
    for tensor in stage.tensors:
        per_element, w = _merge_bytes_per_element(stage, tensor, donors)
        footprint = tensor.numel * per_element
        peak = max(peak, footprint)
        largest = max(largest, tensor.numel)
        if tensor.numel * w < HEAP_BLOCK_LIMIT:
            heap_peak = max(heap_peak, footprint)
    return int(peak + max(largest, HEAP_RESIDUE_FACTOR * heap_peak)) + TORCH_ENGINE_BYTES


def _merge_bytes_per_element(stage: StagePlan, tensor: PlannedTensor,
                             donors: Mapping[str, DonorInfo]) -> tuple[float, int]:
    """``k·w + max(s, scratch, r + o)`` of :func:`stage_peak_ram_bytes`, and ``w``."""
    spec = method_spec(stage.merge_method)
    phases = METHOD_SCRATCH.get(stage.merge_method.lower()) or tuple(chain(*METHOD_SCRATCH.values()))
    k = len(tensor.sources)
    widened = spec is not None and spec.float32_result and k > 1
    working = (known_dtype_code(stage.output.dtype) or tensor.dtype) if widened else tensor.dtype
    w = BY_CODE[working].size
    read = max((BY_CODE[code].size for code in _source_dtypes(tensor, donors) if code != working), default=0)
    read = max(read, _adapter_read_bytes(tensor, donors))
    scratch = max(p.bytes_per_element(k, w, _mask_size(working)) for p in phases)
    result_code = "F32" if widened and w < BY_CODE["F32"].size else working
    result = 0 if _returns_input(stage, tensor) else BY_CODE[result_code].size
    if result_code != tensor.dtype:
        result += BY_CODE[tensor.dtype].size
    return k * w + max(read, scratch, result), w


def _adapter_read_bytes(tensor: PlannedTensor, donors: Mapping[str, DonorInfo]) -> int:
    """Bytes per element of reading a MODEL+LORA donor's tensor: the stored input, its float32
    copy and the float32 delta added to it (engine/lora.py)."""
    sizes = [0]
    for source in tensor.sources:
        donor = donors.get(source.model)
        info = donor.tensor(source.tensor) if donor is not None and donor.adapter else None
        if info is not None:
            sizes.append(BY_CODE[info.dtype].size + 2 * BY_CODE["F32"].size)
    return max(sizes)


def _mask_size(working: str) -> int:
    """Element size of the dtype DARE draws its masks in: bfloat16 for bfloat16, else float32."""
    return BY_CODE["BF16" if working == "BF16" else "F32"].size


def _source_dtypes(tensor: PlannedTensor, donors: Mapping[str, DonorInfo]) -> list[str]:
    """Stored dtype codes of ``tensor``'s sources that the donors describe."""
    codes = []
    for source in tensor.sources:
        donor = donors.get(source.model)
        info = donor.tensor(source.tensor) if donor else None
        if info is not None:
            codes.append(info.dtype)
    return codes


def _returns_input(stage: StagePlan, tensor: PlannedTensor) -> bool:
    """A passthrough without ``scale`` hands its input on as the result."""
    return stage.merge_method == "passthrough" and not any("scale" in s.parameters for s in tensor.sources)


def _copies_bytes_only(stage: StagePlan, donors: Mapping[str, DonorInfo]) -> bool:
    """Plain passthrough: every output tensor is one source tensor's bytes, unchanged."""
    if stage.merge_method != "passthrough":
        return False
    for tensor in stage.tensors:
        if len(tensor.sources) != 1:
            return False
        source = tensor.sources[0]
        donor = donors.get(source.model)
        info = donor.tensor(source.tensor) if donor else None
        if (donor is None or info is None or donor.weight_format == "bin" or donor.adapter
                or info.dtype != tensor.dtype or info.shape != tensor.shape or "scale" in source.parameters):
            return False
    return True


def estimate_plan(plan: Plan, donors: Mapping[str, DonorInfo],
                  options: EstimateOptions = EstimateOptions()) -> RecipeEstimate:
    """Estimate every stage of ``plan``, compare the final output with each donor it uses,
    and add up what the merge needs (``donors`` holds the recipe's real donors by name)."""
    stages = tuple(estimate_model(s.output, options) for s in plan.stages)
    final = stages[-1]
    stage_names = {s.name for s in plan.stages if s.name}
    used: list[str] = []
    for stage in plan.stages:
        for usage in stage.donor_usage:
            if usage.model not in used and usage.model not in stage_names and usage.model in donors:
                used.append(usage.model)
    comparisons = []
    for name in used:
        donor_estimate = estimate_model(donors[name], options)
        comparisons.append(DonorComparison(name, donor_estimate, final.total_bytes - donor_estimate.total_bytes))
    known = dict(donors) | {s.name: s.output for s in plan.stages if s.name}
    merge = MergeResources(
        download_bytes=sum(donors[n].download_bytes for n in used),
        output_disk_bytes=final.stored_bytes,
        intermediate_disk_bytes=sum(s.stored_bytes for s in stages[:-1]),
        peak_ram_bytes=max(stage_peak_ram_bytes(s, known) for s in plan.stages),
    )
    return RecipeEstimate(stages, tuple(s.label for s in plan.stages), tuple(comparisons), merge)


@dataclass(frozen=True)
class MoeEstimate:
    """A frankenMoE's output: its estimate (VRAM, KV cache, sizes) with total and active parameters."""

    estimate: Estimate
    total_params: int
    active_params: int  # per token: all but the routed experts, plus experts_per_token of them (shared always)


def estimate_moe(recipe: MoeRecipe, base: DonorInfo, options: EstimateOptions = EstimateOptions()) -> MoeEstimate:
    """Estimate the MoE (Mixtral or Qwen2-MoE) that ``recipe`` builds from ``base`` (every expert
    has the base's shapes; the attention, hence the KV cache, is the base's)."""
    from .moe_output import moe_output_donor, moe_parameters

    counts = moe_parameters(recipe, base)
    return MoeEstimate(estimate_model(moe_output_donor(recipe, base), options), counts.total, counts.active)


def format_context(tokens: int) -> str:
    """``4k`` for multiples of 1024 tokens, else the number."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def gib_to_bytes(gib: float) -> int:
    """Whole bytes in ``gib`` GiB."""
    return int(gib * GIB)
