"""The merge methods we support and every fact about their parameters, as mergekit defines them.

A :class:`ParameterSpec` is the one owner of a parameter's kind, default, valid range, edit
bounds, whether the designer shows it as a per-layer curve or as a setting, and its help
text. Validation, the pure edits, the curve editor, the method settings and the engine all
read these; none keeps a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from .recipe import Scalar

REQUIRED = object()  # marks a parameter without default
Kind = Literal["float", "int", "bool"]
Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-math.inf, math.inf)
FRACTION: Bounds = (0.0, 1.0)


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a method; ``shared`` ones are evaluated on the output tensor name,
    per-model ones on each input's tensor name (``non_base`` ones skip the base model).

    ``valid`` is the range validation accepts; ``edit`` the range the designer drags and draws
    a curve in (inside ``valid``); ``curve`` whether it varies over the layers (else it is a
    setting: a switch, a count or a threshold); ``unset`` what the merge does when a parameter
    without default is left out.
    """

    name: str
    default: Scalar | None | object
    shared: bool
    non_base: bool = False
    kind: Kind = "float"
    valid: Bounds = UNBOUNDED
    edit: Bounds = FRACTION
    curve: bool = False
    help: str = ""
    unset: str = "the merge goes without it"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def default_value(self) -> Scalar | None:
        """The default, None for a required parameter."""
        return None if self.required else self.default  # type: ignore[return-value]


# Facts of each parameter name, whichever method reads it; methods override where they differ.
_FACTS: dict[str, ParameterSpec] = {p.name: p for p in (
    ParameterSpec("t", REQUIRED, True, valid=FRACTION, curve=True,
                  help="interpolation from the base model (0) to the other model (1)"),
    ParameterSpec("weight", REQUIRED, False, edit=(-1.0, 2.0), curve=True,
                  help="how much of this model goes into the merge"),
    ParameterSpec("density", 1.0, False, non_base=True, valid=FRACTION, curve=True,
                  help="share of this model's delta that is kept"),
    ParameterSpec("lambda", 1.0, True, edit=(0.0, 2.0), curve=True, help="scale of the merged delta"),
    ParameterSpec("scale", None, False, edit=(0.0, 2.0), curve=True, help="factor the copied tensor is scaled by",
                  unset="the tensors are copied unscaled"),
    ParameterSpec("gamma", 0.01, False, non_base=True, valid=FRACTION, curve=True,
                  help="share of the largest deltas dropped as outliers"),
    ParameterSpec("epsilon", 0.15, False, non_base=True, valid=FRACTION, curve=True,
                  help="spread of the keep probabilities around density"),
    ParameterSpec("select_topk", 1.0, True, valid=FRACTION, curve=True,
                  help="share of elements kept, those whose deltas vary most across models"),
    ParameterSpec("r", 0.1, True, curve=True, help="strength of the boost of unique deltas"),
    ParameterSpec("alpha", 0.2, True, curve=True, help="largest ratio of shared to unique elements boosted"),
    ParameterSpec("eps", 1e-8, True, valid=(0.0, math.inf), help="floor that keeps the norms from dividing by zero"),
    ParameterSpec("max_iter", 10, True, kind="int", valid=(1, math.inf), help="most iterations of the Karcher mean"),
    ParameterSpec("tol", 1e-5, True, valid=(0.0, math.inf), help="stop iterating once a step is smaller than this"),
    ParameterSpec("normalize", False, True, kind="bool", help="divide the merged deltas by the sum of the weights"),
    ParameterSpec("normalize_weights", True, True, kind="bool", help="divide the weights by their sum"),
    ParameterSpec("rescale", False, True, kind="bool",
                  help="scale the deltas that survive the drop by 1/density, keeping their expected size"),
    ParameterSpec("int8_mask", False, True, kind="bool",
                  help="store the drop masks as int8 to save memory (same result)"),
    ParameterSpec("filter_wise", False, True, kind="bool",
                  help="compute the interpolation ratio per row (filter) instead of per tensor"),
    ParameterSpec("nuslerp_flatten", True, True, kind="bool",
                  help="interpolate each tensor as one flat vector (off: per row or column)"),
    ParameterSpec("nuslerp_row_wise", False, True, kind="bool",
                  help="without flattening, interpolate rows instead of columns"),
)}


def _param(name: str, default: Scalar | None | object = ..., **overrides: object) -> ParameterSpec:
    """The facts of ``name``, with this method's ``default`` and other differences."""
    if default is not ...:
        overrides["default"] = default
    return replace(_FACTS[name], **overrides)  # type: ignore[arg-type]


# RAM's epsilon is a numerical threshold (about 1e-5), not a fraction to shape per layer.
_THRESHOLD = dict(shared=True, non_base=False, curve=False, help="deltas no larger than this count as zero")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    parameters: tuple[ParameterSpec, ...]
    needs_base: bool = False
    min_models: int = 1
    max_models: int | None = None  # per slice, base included
    uses_vocab_merge: bool = True  # would merge vocab-indexed rows from several donors
    float32_result: bool = False  # returns float32 (or wider) whatever the working dtype; mergekit stores that

    @property
    def shared_parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(p for p in self.parameters if p.shared)

    @property
    def model_parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(p for p in self.parameters if not p.shared)

    @property
    def curve_parameters(self) -> tuple[ParameterSpec, ...]:
        return tuple(p for p in self.parameters if p.curve)

    @property
    def settings(self) -> tuple[ParameterSpec, ...]:
        """Shared parameters edited as settings, not curves."""
        return tuple(p for p in self.shared_parameters if not p.curve)

    def parameter(self, name: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


def _task_arithmetic_family(name: str, label: str, normalize: bool, rescale: bool,
                            *extra: ParameterSpec) -> MethodSpec:
    return MethodSpec(
        name, label,
        (
            _param("int8_mask"),
            _param("normalize", normalize),
            _param("rescale", rescale),
            _param("lambda"),
            _param("weight", non_base=True),
            _param("density"),
            *extra,
        ),
        needs_base=True, min_models=2,
    )


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("passthrough", "Passthrough (stack layers)", (_param("scale"),), max_models=1,
                   uses_vocab_merge=False),
        MethodSpec("slerp", "SLERP", (_param("t"),), needs_base=True, min_models=2, max_models=2),
        MethodSpec("linear", "Linear (weighted average)", (_param("normalize", True), _param("weight")), min_models=1),
        _task_arithmetic_family("task_arithmetic", "Task arithmetic", normalize=False, rescale=False),
        _task_arithmetic_family("ties", "TIES", normalize=True, rescale=False),
        _task_arithmetic_family("dare_ties", "DARE TIES", normalize=False, rescale=True),
        _task_arithmetic_family("dare_linear", "DARE linear", normalize=False, rescale=True),
        _task_arithmetic_family("breadcrumbs", "Model Breadcrumbs", False, False, _param("gamma")),
        _task_arithmetic_family("breadcrumbs_ties", "Model Breadcrumbs with TIES", False, False, _param("gamma")),
        _task_arithmetic_family("della", "DELLA", True, True, _param("epsilon")),
        _task_arithmetic_family("della_linear", "DELLA linear", False, True, _param("epsilon")),
        MethodSpec("sce", "SCE (select, calculate, erase)", (_param("int8_mask"), _param("select_topk")),
                   needs_base=True, min_models=2),
        MethodSpec("model_stock", "Model Stock", (_param("filter_wise"),), needs_base=True, min_models=3),
        MethodSpec("nuslerp", "NuSLERP",
                   (_param("nuslerp_row_wise"), _param("nuslerp_flatten"), _param("weight", non_base=True)),
                   min_models=2),
        MethodSpec("multislerp", "Multi-SLERP (spherical barycentre)",
                   (_param("normalize_weights"), _param("eps"), _param("weight", non_base=True)), min_models=1),
        MethodSpec("karcher", "Karcher mean", (_param("max_iter"), _param("tol")), min_models=1),
        # nearswap's t is a distance between weights (about 1e-4), not a fraction.
        MethodSpec("nearswap", "NearSwap",
                   (_param("t", valid=(0.0, math.inf), edit=(0.0, 0.01),
                           help="distance within which the other model's values are taken"),),
                   needs_base=True, min_models=2, max_models=2),
        MethodSpec("arcee_fusion", "Arcee Fusion", (), needs_base=True, min_models=2, max_models=2,
                   float32_result=True),
        MethodSpec("ram", "RAM (reinforced agent merging)", (_param("epsilon", 1e-5, **_THRESHOLD),),
                   needs_base=True, min_models=2),
        MethodSpec("ramplus_tl", "RAM+ (tensor-local)",
                   (_param("r"), _param("alpha"), _param("epsilon", 1e-5, **_THRESHOLD)),
                   needs_base=True, min_models=2, float32_result=True),
    )
}


def method_spec(name: str) -> MethodSpec | None:
    """The spec of merge method ``name`` (case-insensitive), or None when unknown."""
    return METHODS.get(name.lower())


def parameter_facts(method: str, name: str) -> ParameterSpec | None:
    """What ``method`` knows of parameter ``name``; for a name the method does not read, the
    facts other methods give it (so a typo'd ``t: 2`` is still out of range); None when unknown."""
    spec = method_spec(method)
    own = spec.parameter(name) if spec else None
    return own or _FACTS.get(name)


def parameter_default(method: str, name: str) -> Scalar | None:
    """The default of ``method``'s parameter ``name``; None when it has none or is required."""
    spec = method_spec(method)
    param = spec.parameter(name) if spec else None
    return param.default_value if param else None
