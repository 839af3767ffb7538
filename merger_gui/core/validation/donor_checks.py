"""Checks of donors against each other: architecture, layer layouts, missing tensors, a tied lm_head."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping

from ..donor import DonorInfo
from ..plan import StagePlan, config_donor_name
from .context import StageContext

# DonorInfo field → words for messages; donors of one stage must agree on all of them.
ARCHITECTURE_FIELDS = (
    ("hidden_size", "hidden size"),
    ("num_heads", "attention head count"),
    ("num_kv_heads", "KV head count"),
    ("intermediate_size", "intermediate size"),
    ("head_dim", "head_dim"),
)


def check_architecture(ctx: StageContext) -> None:
    known = ctx.known_models()
    config = config_donor_name(ctx.stage)
    known.sort(key=lambda item: item[0] != config)  # compare everyone to the config donor
    if len(known) < 2:
        return
    ref_model, ref = known[0]
    if ctx.stage.models is not None and len({d.num_layers for _, d in known}) > 1:
        detail = ", ".join(f"{m} {d.num_layers}" for m, d in known)
        ctx.add("error", "layer-count-mismatch",
                f"the models have different layer counts ({detail}); the models form merges every layer "
                "of each, so use slices with equal layer ranges instead", key="models")
    for model, donor in known[1:]:
        for field, words in ARCHITECTURE_FIELDS:
            a, b = getattr(ref, field), getattr(donor, field)
            if a != b:
                ctx.add("error", "architecture-mismatch",
                        f"{words} differs: {ref_model} has {a}, {model} has {b}; these donors cannot "
                        "be combined into one model", key=field)


def check_tied_head(ctx: StageContext) -> None:
    slices = ctx.slices()
    if not slices:
        return
    tail_model = slices[-1].sources[0].model
    config_model = config_donor_name(ctx.stage)
    tail, config = ctx.donor(tail_model), ctx.donor(config_model)
    if tail is None or config is None or tail.has_lm_head or config.tie_word_embeddings:
        return
    ctx.add("warning", "tied-embeddings-last",
            f"{tail_model} (last slice) has no lm_head, it ties it to its embeddings, but the output "
            f"config from {config_model} has tie_word_embeddings: false; mergekit would leave lm_head "
            f"random at load — we copy {tail_model}'s embeddings as lm_head", len(slices) - 1, 0, "model")


def check_planned_inputs(ctx: StageContext, plan: StagePlan) -> None:
    """An output without layers, and donors that lack a tensor the merge needs from them."""
    if not plan.layers:
        if any(f.is_error and f.key == "layer_range" for f in ctx.findings):
            return  # a reversed or out-of-range layer_range, already reported
        ctx.add("error", "no-layers", "the output has no layers: every layer_range is empty "
                "(the end is exclusive: [k, k + 1] is layer k)", key="layer_range")
        return
    slices = ctx.slices()
    for tensor in plan.tensors:
        given = {s.model for s in tensor.sources}
        lacking = [s.model for s in slices[tensor.slice_index].sources if s.model not in given]
        if lacking:
            ctx.add("error", "missing-tensor",
                    f"{lacking[0]} has no tensor for {tensor.name}, which the merge needs from every source "
                    "of its slice; the donor is incomplete or of another architecture", tensor.slice_index)
            return
    for model, layer, missing in _incomplete_layers(plan, ctx.donors):
        ctx.add("error", "missing-tensor",
                f"layer {layer} of {model} has no {missing} (its other layers have it); "
                "the donor is incomplete, the output would lack that tensor", key="layer_range")
        return
    config = ctx.donors.get(plan.config_donor)
    expected = {_layout(config, i) for i in range(config.num_layers)} if config and config.tensors else set()
    for usage in plan.donor_usage:
        donor = ctx.donors.get(usage.model)
        if donor is None or not donor.tensors or not expected:
            continue
        for layer in (i for i, c in enumerate(usage.counts) if c):
            layout = _layout(donor, layer)
            if layout not in expected:
                other = min(expected, key=lambda e: len(e ^ layout))
                extra, lacking = sorted(layout - other), sorted(other - layout)
                what = f"has {extra[0]}" if extra else f"lacks {lacking[0]}"
                ctx.add("error", "layer-layout-mismatch",
                        f"layer {layer} of {usage.model} {what}, unlike the layers of {plan.config_donor} "
                        "(the config donor); these donors are of different architectures", key="layer_range")
                return


def _incomplete_layers(plan: StagePlan, donors: Mapping[str, DonorInfo]) -> Iterator[tuple[str, int, str]]:
    """(model, layer, tensor suffix) of used donor layers missing a tensor their other layers have.

    A layer counts as incomplete when its tensors are a strict subset of the donor's most common
    layer layout and no other layer shares its layout (so deliberately different layers, like a
    MoE model's dense first layers, are left alone).
    """
    for usage in plan.donor_usage:
        donor = donors.get(usage.model)
        if donor is None or not donor.tensors:
            continue
        layouts = [_layout(donor, i) for i in range(donor.num_layers)]
        common = Counter(layouts).most_common(1)[0][0]
        for layer, count in enumerate(usage.counts):
            layout = layouts[layer]
            if count and layout < common and layouts.count(layout) == 1:
                yield usage.model, layer, sorted(common - layout)[0]


def _layout(donor: DonorInfo, layer: int) -> frozenset[str]:
    """The tensor names of one donor layer without their layer prefix."""
    return frozenset(_layer_suffix(t.name) for t in donor.layer_tensors(layer))


def _layer_suffix(name: str) -> str:
    return re.sub(r"^.*?\.\d+\.", "", name, count=1)
