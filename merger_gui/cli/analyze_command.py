"""``merger-gui analyze``: where to cut — layer similarity of donors, layer distances, a recipe's seams."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from merger_gui.core.donor import DonorInfo
from merger_gui.core.errors import UserError

from .common import add_donor_argument, add_json_argument, print_json
from .evaluate_command import add_evaluation_arguments, positive_int
from .terminal import StatusLine


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="where to cut: layer similarity of two donors, each layer's change of the hidden state, a recipe's seams",
        description="With one or two DONORs (folder or Hub repo id with weights): the cosine similarity of every "
                    "layer of the first with every layer of the second (all of a layer's weights as one vector, "
                    "streamed), with --base the same over the deltas from BASE and each donor's relative change "
                    "per layer ||W - W_base|| / ||W_base||; then each donor runs over a text (transformers) and "
                    "each layer's mean angular distance arccos(cos(h_in, h_out))/pi is reported (and over "
                    "blocks of --block N layers, as PruneMe does). With a RECIPE (.yaml): for every seam of "
                    "each stage (donor X layer i followed by donor Y layer j), the distance between X's layer "
                    "i output and Y's layer j input on the text, and the j closest to it. Exit status: 0, 1 on "
                    "an error, 2 on a usage error, 130 when interrupted.",
    )
    parser.add_argument("target", metavar="DONOR|RECIPE", help="a donor (folder or repo id) or a recipe (.yaml)")
    parser.add_argument("second", metavar="DONOR2", nargs="?", help="a second donor of the same architecture")
    parser.add_argument("--base", metavar="BASE", help="common base model: similarity of task vectors and "
                                                       "relative change per layer")
    add_evaluation_arguments(parser)
    parser.add_argument("--block", type=positive_int, metavar="N", help="also the distance across blocks of N layers")
    parser.add_argument("--no-activations", action="store_true",
                        help="weights only: do not run the donors (for donors too large to run here)")
    add_donor_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merger_gui.engine.activation_analysis import ActivationOptions
    from merger_gui.engine.evaluate import read_text_file

    text = read_text_file(args.text, args.max_tokens) if args.text else None
    options = ActivationOptions(text, args.max_tokens, (args.block,) if args.block else (), args.device)
    if args.target.lower().endswith((".yaml", ".yml")):
        if args.second or args.base:
            raise UserError("a recipe is analysed alone: DONOR2 and --base are for donors")
        report = _recipe_report(args.target, args.donor, options)
    else:
        report = _donor_report(args, options)
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0


def _donor_report(args: argparse.Namespace, options: Any) -> dict[str, Any]:
    from merger_gui.core.resolve import resolve_donor
    from merger_gui.engine.activation_analysis import ActivationsDone, analyze_activations
    from merger_gui.engine.layer_similarity import SimilarityDone, compare_layers

    donors = [(ref, _with_weights(ref, resolve_donor(ref))) for ref in (args.target, args.second) if ref]
    base = (args.base, _with_weights(args.base, resolve_donor(args.base))) if args.base else None
    weights: dict[str, Any] = {}
    if len(donors) == 2 or base is not None:
        result = _drive(compare_layers(donors, base), SimilarityDone, "weights").result
        if result.similarity is not None:
            weights["similarity"] = [list(row) for row in result.similarity]
        if result.relative_change is not None:
            weights["base_delta"] = [list(row) for row in result.relative_change]
    activations: list[dict[str, Any]] = []
    if not args.no_activations:
        folders = [(name, info) for name, info in donors]  # with its LoRA adapter, if any
        done = _drive(analyze_activations(folders, options), ActivationsDone, "activations")
        activations = [_distances_json(d) for d in done.distances]
    return {"donors": [{"name": name, "num_layers": info.num_layers} for name, info in donors],
            "weights": weights, "activations": activations, "seams": []}


def _recipe_report(path: str, donor_items: Sequence[str], options: Any) -> dict[str, Any]:
    from merger_gui.core.plan import plan_layers
    from merger_gui.engine.activation_analysis import SeamsDone, analyze_seams, stage_seams

    from .common import donors_for, load_recipe_file, require_donors

    recipe = load_recipe_file(path)
    donors, errors = donors_for(recipe, path, donor_items)
    stage_names = set(recipe.stage_names())
    seams = []
    for index, stage in enumerate(recipe.stages):
        if any(m in stage_names for m in stage.referenced_models):
            print(f"warning: stage {stage.name or index + 1} takes layers from another stage's output, which "
                  "is not on disk: its seams are left out", file=sys.stderr)
            continue
        require_donors({m: e for m, e in errors.items() if m in stage.referenced_models})
        seams += stage_seams(stage.name or str(index + 1), plan_layers(stage, donors))
    used = list(dict.fromkeys(m for s in seams for m in (s.source.model, s.target.model)))
    folders = {m: _with_weights(m, donors[m]) for m in used}
    done = _drive(analyze_seams(seams, folders, options), SeamsDone, "seams") if seams else None
    return {"donors": [{"name": m, "num_layers": donors[m].num_layers} for m in used],
            "weights": {},
            "activations": [_distances_json(d) for d in done.distances] if done else [],
            "seams": [{"stage": s.seam.stage, "index": s.seam.index,
                       "from": {"model": s.seam.source.model, "layer": s.seam.source.layer},
                       "to": {"model": s.seam.target.model, "layer": s.seam.target.layer},
                       "distance": s.distance, "best_to_layer": s.best_to_layer} for s in done.seams] if done else []}


def _with_weights(name: str, info: DonorInfo) -> DonorInfo:
    if info.path is None:
        raise UserError(f"donor {name} has no local weights ({info.kind}): analysis reads them; download it or "
                        "give a folder")
    return info


def _drive(events: Iterable[Any], done_type: type, what: str) -> Any:
    """Run an analysis generator with a status line; its final ``done_type`` event."""
    status = StatusLine(sys.stderr)
    result = None
    try:
        for event in events:
            if isinstance(event, done_type):
                result = event
            elif hasattr(event, "total"):
                status.show(f"{what}: [{event.done}/{event.total}] {event.message}")
            else:
                status.show(f"{what}: [{event.step}/{event.steps}] {event.message}")
    finally:
        status.clear()
    return result


def _distances_json(distances: Any) -> dict[str, Any]:
    return {"donor": distances.donor, "layer_distance": list(distances.layer_distance),
            "block_distance": {str(n): list(v) for n, v in distances.block_distance.items()}}


def _print_report(report: dict[str, Any]) -> None:
    names = [d["name"] for d in report["donors"]]
    weights = report["weights"]
    if "similarity" in weights:
        print(f"weight similarity: for each layer of {names[0]}, the closest layer of {names[1]}")
        for i, row in enumerate(weights["similarity"]):
            best = max(range(len(row)), key=row.__getitem__)
            print(f"  {i:4d} -> {best:4d}  cos {row[best]:.4f}   (same layer {row[i]:.4f})" if i < len(row)
                  else f"  {i:4d} -> {best:4d}  cos {row[best]:.4f}")
    for name, change in zip(names, weights.get("base_delta", [])):
        print(f"relative change from the base, {name}: " + " ".join(f"{c:.3g}" for c in change))
    for entry in report["activations"]:
        print(f"layer distance, {entry['donor']} (0: the layer leaves the hidden state as it is):")
        distances = entry["layer_distance"]
        print("  " + " ".join(f"{k}:{d:.3f}" for k, d in enumerate(distances)))
        print(f"  smallest: layer {min(range(len(distances)), key=distances.__getitem__)}")
        for n, values in entry["block_distance"].items():
            first = min(range(len(values)), key=values.__getitem__)
            print(f"  suggestion: drop the {n}-layer block {first}-{first + int(n) - 1}: the smallest change "
                  f"({values[first]:.3f})")
    for seam in report["seams"]:
        source, target = seam["from"], seam["to"]
        print(f"seam stage {seam['stage']} at output layer {seam['index']}: {source['model']} {source['layer']} -> "
              f"{target['model']} {target['layer']}: distance {seam['distance']:.3f}; closest input: "
              f"{target['model']} {seam['best_to_layer']}")
