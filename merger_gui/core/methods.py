"""The merge methods we support and their parameters, as mergekit defines them."""

from __future__ import annotations

from dataclasses import dataclass

from .recipe import Scalar

REQUIRED = object()  # marks a parameter without default


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a method; ``shared`` ones are evaluated on the output tensor name,
    per-model ones on each input's tensor name (``non_base`` ones skip the base model)."""

    name: str
    default: Scalar | None | object
    shared: bool
    non_base: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


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

    def parameter(self, name: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


def _task_arithmetic_family(name: str, label: str, normalize: bool, rescale: bool,
                            *extra: ParameterSpec) -> MethodSpec:
    return MethodSpec(
        name, label,
        (
            ParameterSpec("int8_mask", False, shared=True),
            ParameterSpec("normalize", normalize, shared=True),
            ParameterSpec("rescale", rescale, shared=True),
            ParameterSpec("lambda", 1.0, shared=True),
            ParameterSpec("weight", REQUIRED, shared=False, non_base=True),
            ParameterSpec("density", 1.0, shared=False, non_base=True),
            *extra,
        ),
        needs_base=True, min_models=2,
    )


GAMMA = ParameterSpec("gamma", 0.01, shared=False, non_base=True)  # breadcrumbs: share of largest deltas dropped
EPSILON = ParameterSpec("epsilon", 0.15, shared=False, non_base=True)  # della: spread of keep probabilities


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("passthrough", "Passthrough (stack layers)",
                   (ParameterSpec("scale", None, shared=False),), max_models=1, uses_vocab_merge=False),
        MethodSpec("slerp", "SLERP", (ParameterSpec("t", REQUIRED, shared=True),),
                   needs_base=True, min_models=2, max_models=2),
        MethodSpec("linear", "Linear (weighted average)",
                   (ParameterSpec("normalize", True, shared=True),
                    ParameterSpec("weight", REQUIRED, shared=False)), min_models=1),
        _task_arithmetic_family("task_arithmetic", "Task arithmetic", normalize=False, rescale=False),
        _task_arithmetic_family("ties", "TIES", normalize=True, rescale=False),
        _task_arithmetic_family("dare_ties", "DARE TIES", normalize=False, rescale=True),
        _task_arithmetic_family("dare_linear", "DARE linear", normalize=False, rescale=True),
        _task_arithmetic_family("breadcrumbs", "Model Breadcrumbs", False, False, GAMMA),
        _task_arithmetic_family("breadcrumbs_ties", "Model Breadcrumbs with TIES", False, False, GAMMA),
        _task_arithmetic_family("della", "DELLA", True, True, EPSILON),
        _task_arithmetic_family("della_linear", "DELLA linear", False, True, EPSILON),
        MethodSpec("sce", "SCE (select, calculate, erase)",
                   (ParameterSpec("int8_mask", False, shared=True),
                    ParameterSpec("select_topk", 1.0, shared=True)),
                   needs_base=True, min_models=2),
        MethodSpec("model_stock", "Model Stock", (ParameterSpec("filter_wise", False, shared=True),),
                   needs_base=True, min_models=3),
        MethodSpec("nuslerp", "NuSLERP",
                   (ParameterSpec("nuslerp_row_wise", False, shared=True),
                    ParameterSpec("nuslerp_flatten", True, shared=True),
                    ParameterSpec("weight", REQUIRED, shared=False, non_base=True)),
                   min_models=2),
        MethodSpec("multislerp", "Multi-SLERP (spherical barycentre)",
                   (ParameterSpec("normalize_weights", True, shared=True),
                    ParameterSpec("eps", 1e-8, shared=True),
                    ParameterSpec("weight", REQUIRED, shared=False, non_base=True)),
                   min_models=1),
        MethodSpec("karcher", "Karcher mean",
                   (ParameterSpec("max_iter", 10, shared=True), ParameterSpec("tol", 1e-5, shared=True)),
                   min_models=1),
        MethodSpec("nearswap", "NearSwap", (ParameterSpec("t", REQUIRED, shared=True),),
                   needs_base=True, min_models=2, max_models=2),
        MethodSpec("arcee_fusion", "Arcee Fusion", (), needs_base=True, min_models=2, max_models=2,
                   float32_result=True),
        MethodSpec("ram", "RAM (reinforced agent merging)", (ParameterSpec("epsilon", 1e-5, shared=True),),
                   needs_base=True, min_models=2),
        MethodSpec("ramplus_tl", "RAM+ (tensor-local)",
                   (ParameterSpec("r", 0.1, shared=True), ParameterSpec("alpha", 0.2, shared=True),
                    ParameterSpec("epsilon", 1e-5, shared=True)),
                   needs_base=True, min_models=2, float32_result=True),
    )
}


def method_spec(name: str) -> MethodSpec | None:
    """The spec of merge method ``name`` (case-insensitive), or None when unknown."""
    return METHODS.get(name.lower())
