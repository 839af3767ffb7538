"""``merger-gui sweep``: merge and evaluate a recipe at several values of one parameter."""

from __future__ import annotations

import argparse
import sys

from merger_gui.core.errors import UserError

from .common import (
    add_donor_argument, add_json_argument, add_recipe_argument, donors_for, load_recipe_file, print_json,
    require_donors,
)
from .evaluate_command import add_evaluation_arguments
from .terminal import StatusLine, cancelled_how, cancelling_signals, interrupting_signal


def value_list(text: str) -> tuple[float, ...]:
    """``--values 0.3,0.4,0.5`` (a usage error when not numbers, each once)."""
    from merger_gui.engine.sweep import parse_values

    try:
        return parse_values(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="merge and evaluate a recipe at several values of one parameter",
        description="For each of --values, set --param in the recipe's final stage, merge the variant into "
                    "OUT_DIR/PARAM-VALUE, score it on the text (perplexity, and agreement with each of the "
                    "stage's local donors, which are scored once first), and delete it unless --keep: the "
                    "disk needed is one variant plus the kept ones. OUT_DIR/sweep.json records every "
                    "finished variant, so a sweep that was stopped resumes where it stopped when run again. "
                    "Exit status: 0, 1 on an error, 2 on a usage error, 130 when interrupted.",
    )
    add_recipe_argument(parser)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the sweep's folder (sweep.json and kept variants)")
    parser.add_argument("--param", required=True, metavar="PATH",
                        help="the parameter as the YAML names it at the top of the final stage: t (the whole "
                             "parameter) or t.self_attn (its rule with filter self_attn)")
    parser.add_argument("--values", required=True, type=value_list, metavar="V1,V2,…",
                        help="the values, comma-separated, e.g. 0.3,0.4,0.5,0.6,0.7 (a negative first value "
                             "after =: --values=-0.5,0.5)")
    parser.add_argument("--keep", action="store_true", help="keep every variant's model folder")
    add_evaluation_arguments(parser)
    add_donor_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merger_gui.engine.evaluate import EvaluationOptions, EvaluationProgress, read_text_file
    from merger_gui.engine.run import MergeOptions, TensorProgress
    from merger_gui.engine.sweep import SweepDone, SweepOptions, VariantDone, VariantStarted, run_sweep

    recipe = load_recipe_file(args.recipe)
    donors, errors = donors_for(recipe, args.recipe, args.donor)
    require_donors(errors)
    text = read_text_file(args.text, args.max_tokens) if args.text else None
    options = SweepOptions(keep=args.keep,
                           evaluation=EvaluationOptions(text=text, max_tokens=args.max_tokens, device=args.device),
                           merge=MergeOptions(device=args.device, recipe_path=args.recipe))
    status = StatusLine(sys.stderr)
    where = ""
    events = run_sweep(recipe, donors, args.out_dir, args.param, args.values, options)
    try:
        with cancelling_signals():  # SIGTERM and SIGHUP cancel like Ctrl-C
            for event in events:
                if isinstance(event, VariantStarted):
                    where = f"{args.param} = {event.value:g} ({event.index + 1}/{event.count})"
                elif isinstance(event, TensorProgress):
                    status.show(f"{where}: merging {event.overall_index}/{event.overall_count} tensors")
                elif isinstance(event, EvaluationProgress):
                    status.show(f"{where + ': ' if where else ''}{event.message}")
                elif isinstance(event, VariantDone) and not args.json:
                    status.line(f"{args.param} = {event.result.value:g}: perplexity {event.result.perplexity:.3f}"
                                f"{' (recorded earlier)' if event.resumed else ''}")
                elif isinstance(event, SweepDone):
                    result = event.result
    except KeyboardInterrupt as stop:
        events.close()  # removes the unfinished variant
        status.clear()
        signum = interrupting_signal(stop)
        print(f"{cancelled_how(signum)}: the finished variants are recorded in {args.out_dir}; "
              "run the same command to resume", file=sys.stderr)
        return 128 + signum
    finally:
        status.clear()
    if args.json:
        print_json(result.to_json())
        return 0
    names = list(result.donors)  # columns numbered, the donors named below: their names may be long paths
    print("  ".join([f"{args.param:>12}", f"{'perplexity':>10}", *(f"agree #{k}" for k in range(1, len(names) + 1))]))
    for variant in result.variants:
        cells = [_percent(variant.agreement.get(name)).rjust(len(f"agree #{k}")) for k, name in enumerate(names, 1)]
        print("  ".join([f"{variant.value:>12g}", f"{variant.perplexity:>10.3f}", *cells]))
    for k, name in enumerate(names, 1):
        print(f"#{k} {name}: perplexity {result.donors[name]:.3f}")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
