"""``merger-gui evaluate``: perplexity, agreement with donors and a greedy generation of a model folder."""

from __future__ import annotations

import argparse
import sys

from .terminal import StatusLine
from .common import add_json_argument, print_json

DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_NEW_TOKENS = 48


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number ≥ 1")
    return value


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--text``, ``--max-tokens`` and ``--device``, shared with ``sweep``."""
    parser.add_argument("--text", metavar="FILE", help="UTF-8 text to score (default: the sample text shipped "
                                                       "with the app, a few paragraphs of public-domain prose)")
    parser.add_argument("--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS, metavar="N",
                        help=f"cut the tokenized text to N tokens (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model runs (cpu: float32; cuda: the stored dtype)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="perplexity of a model on a text, next-token agreement with donors, a greedy generation",
        description="Load MODEL_DIR with transformers and score it on a text: perplexity = exp(mean negative "
                    "log-likelihood of every token after the first), the text tokenized as the model's "
                    "tokenizer does by default and cut to --max-tokens. Each --against donor is then scored "
                    "in turn (one model in memory at a time), with its agreement: the share of positions "
                    "where its most likely next token is the model's. --prompt adds a greedy generation "
                    "(through the chat template when the tokenizer has one). Exit status: 0, 1 on an "
                    "error, 2 on a usage error, 130 when interrupted.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (config.json, weights, tokenizer)")
    parser.add_argument("--against", action="extend", nargs="+", default=[], metavar="DONOR",
                        help="donor folders to compare with (repeatable)")
    add_evaluation_arguments(parser)
    parser.add_argument("--prompt", metavar="TEXT", help="generate greedily from TEXT (default: no generation)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                        help=f"generate at most N tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    add_json_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merger_gui.engine.evaluate import (
        EvaluationDone, EvaluationOptions, EvaluationProgress, EvaluationWarning, evaluate_model, read_text_file,
    )

    text = read_text_file(args.text, args.max_tokens) if args.text else None
    options = EvaluationOptions(text=text, max_tokens=args.max_tokens, prompt=args.prompt,
                                max_new_tokens=args.max_new_tokens, device=args.device)
    status = StatusLine(sys.stderr)
    try:
        for event in evaluate_model(args.model_dir, args.against, options):
            if isinstance(event, EvaluationProgress):
                status.show(f"[{event.step}/{event.steps}] {event.message}")
            elif isinstance(event, EvaluationWarning):
                status.line(f"warning: {event.message}")
            elif isinstance(event, EvaluationDone):
                evaluation = event.evaluation
    finally:
        status.clear()
    if args.json:
        print_json(evaluation.to_json())
        return 0
    print(f"model       {evaluation.model}")
    print(f"tokens      {evaluation.tokens}{'' if args.text else ' of the sample text'}")
    print(f"perplexity  {evaluation.perplexity:.3f}")
    for donor in evaluation.against:
        agreement = "n/a (another tokenization)" if donor.agreement is None else f"{donor.agreement:.1%}"
        print(f"against     {donor.donor}: perplexity {donor.perplexity:.3f}, agreement {agreement}")
    if evaluation.generation is not None:
        print(f"generation  {evaluation.generation!r}")
    if evaluation.far_worse:
        print("warning: the perplexity is more than twice the best donor's: the merge may be broken", file=sys.stderr)
    return 0
