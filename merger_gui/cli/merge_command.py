"""``merger-gui merge``: run a recipe into a model folder with a progress bar on stderr."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from merger_gui.core.errors import RecipeError, UserError
from merger_gui.core.units import format_duration, format_size

from .common import add_donor_argument, add_recipe_argument, donors_for, load_recipe_file, require_donors
from .terminal import StatusLine, cancelled_how, cancelling_signals, interrupting_signal

if TYPE_CHECKING:
    from merger_gui.engine.run import MergeEvent, MergeOptions

SIZE_UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
MAX_SEED = 2**32 - 1  # mergekit seeds numpy too, which takes 0 … 2**32 - 1
SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of ``5GB``, ``500MB``, ``1.5GiB`` or ``2e9`` (decimal units, ``iB`` binary ones)."""
    match = SIZE_PATTERN.match(text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 5GB, 500MB, 2GiB or 2e9")
    value = float(match[1]) * SIZE_UNITS[unit]
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: too large")
    size = int(value)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return size


def parse_seed(text: str) -> int:
    """A ``--seed``: a whole number that mergekit's ``--random-seed`` also accepts (numpy's range)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected a whole number from 0 to {MAX_SEED}")
    return seed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a recipe into a model folder (streaming, bounded memory)",
        description="Merge a recipe into OUT_DIR. The output appears only when complete; "
                    "Ctrl-C, SIGTERM and SIGHUP cancel and leave nothing behind (a second signal "
                    "does not cut the clean-up short; the finished stages of a multi-stage recipe "
                    "are kept for the next run, which also removes what a killed merge left). "
                    "Exit status: 0 on success, 1 on an error, 2 on a usage error, 128 + the "
                    "signal's number when cancelled: 130 (Ctrl-C), 143 (SIGTERM), 129 (SIGHUP).",
    )
    add_recipe_argument(parser)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create for the merged model")
    add_donor_argument(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the math")
    parser.add_argument("--shard-size", type=parse_size, default="5GB", metavar="SIZE",
                        help="largest weight file, e.g. 5GB (default), 500MB, 2e9")
    parser.add_argument("--intermediate-dir", metavar="DIR",
                        help="where multi-stage recipes keep earlier stages (default OUT_DIR.intermediate)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR once the new model is complete")
    parser.add_argument("--no-copy-tokenizer", dest="copy_tokenizer", action="store_false",
                        help="do not copy the tokenizer files of the config donor")
    parser.add_argument("--seed", type=parse_seed, default=0, metavar="N",
                        help=f"seed of random methods (dare), 0 to {MAX_SEED}; default 0")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merger_gui.engine.run import MergeOptions, run_merge  # torch only when merging

    options = MergeOptions(device=args.device, shard_size=args.shard_size, intermediate_dir=args.intermediate_dir,
                           overwrite=args.overwrite, copy_tokenizer=args.copy_tokenizer, seed=args.seed,
                           recipe_path=args.recipe)
    out = Path(args.out_dir).absolute()
    moe = _moe_events(args, out, options)
    if moe is None:
        recipe = load_recipe_file(args.recipe)
        donors, errors = donors_for(recipe, args.recipe, args.donor)
        require_donors(errors)
    display = ProgressDisplay(sys.stderr)
    before = _identity(out)
    events = moe if moe is not None else run_merge(recipe, donors, out, options)
    try:
        with cancelling_signals():
            for event in events:
                display.show(event)
    except KeyboardInterrupt as stop:
        events.close()  # the engine removes its partial output
        display.status.clear()
        signum = interrupting_signal(stop)
        print(_cancelled_message(signum, out, _identity(out) != before, display.kept), file=sys.stderr)
        return 128 + signum
    except UserError:
        display.status.clear()
        raise
    return 0


def _moe_events(args: argparse.Namespace, out: Path,
                options: MergeOptions) -> Generator[MergeEvent, None, None] | None:
    """The build of a mergekit-moe recipe (one with ``experts:``), or None for a merge recipe."""
    from merger_gui.core.moe_recipe import is_moe_text, load_moe_text, resolve_moe_donors
    from merger_gui.core.recipe_load import read_recipe_text
    from merger_gui.core.resolve import parse_donor_overrides

    if not Path(args.recipe).is_file():
        return None  # load_recipe_file words the error
    text = read_recipe_text(args.recipe)
    if not is_moe_text(text):
        return None
    from merger_gui.engine.moe import run_moe

    try:
        recipe = load_moe_text(text)
    except RecipeError as error:
        raise RecipeError(f"{args.recipe}: {error}") from None
    donors, errors = resolve_moe_donors(recipe, parse_donor_overrides(args.donor), Path(args.recipe).resolve().parent)
    require_donors(errors)
    return run_moe(recipe, donors, out, options)


def _identity(path: Path) -> tuple[int, int] | None:
    """What tells whether ``path`` was replaced: its device and inode."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _cancelled_message(signum: int, out: Path, written: bool, kept: Sequence[Path]) -> str:
    """What a cancel left, truly: nothing, the finished stages, or (signalled at the very end) the model."""
    how = cancelled_how(signum)
    if written:
        return f"{how} after the merge had finished: {out} is complete"
    if kept:
        folders = ", ".join(str(p) for p in kept)
        stages = f"stages ({folders}) are" if len(kept) > 1 else f"stage ({folders}) is"
        return f"{how}: {out} was not written; the finished {stages} kept for the next run"
    return f"{how}: nothing was written"


class ProgressDisplay:
    """Renders merge events: a one-line bar on a terminal, else a line per stage."""

    def __init__(self, stream: TextIO) -> None:
        self.status = StatusLine(stream)
        self.stage = ""
        self.kept: list[Path] = []  # intermediate stages written by this run

    def show(self, event: object) -> None:
        from merger_gui.engine.run import (
            DownloadProgress, MergeDone, MergeWarning, StageFinished, StageStarted, TensorProgress,
        )
        from merger_gui.engine.events import GateProgress

        status = self.status
        if isinstance(event, MergeWarning):
            status.line(f"warning: {event.message}")
        elif isinstance(event, StageStarted):
            self.stage = f"stage {event.index + 1}/{event.count} {event.name}"
            if not status.live and not event.reused:
                status.line(f"{self.stage}: merging {event.tensors} tensors")
        elif isinstance(event, TensorProgress):
            status.bar(event.bytes_written, event.total_bytes,
                       f"{event.overall_index}/{event.overall_count} tensors · {self.stage}", event.eta)
        elif isinstance(event, GateProgress):  # an MoE's routers: the base model reads the experts' prompts
            if status.live:
                status.bar(event.done, event.total, f"routers: {event.expert} ({event.model}) · {self.stage}", None)
            elif event.done == event.total:
                status.line(f"{self.stage}: routers computed from {event.total} prompt batches")
        elif isinstance(event, DownloadProgress):
            if status.live:
                status.bar(event.downloaded, event.total, f"downloading {event.model}/{event.file} · {self.stage}",
                           None)
            elif event.downloaded == event.total:
                status.line(f"downloaded {event.model}/{event.file} ({format_size(event.total)})")
        elif isinstance(event, StageFinished):
            if not event.reused and event.index < event.count - 1:
                self.kept.append(event.path)
            what = "reused from an earlier run" if event.reused else f"done in {format_duration(event.seconds)}"
            status.line(f"{self.stage}: {what} → {event.path}")
        elif isinstance(event, MergeDone):
            status.clear()
            print(f"merged {event.tensors} tensors ({format_size(event.bytes_written)}) into {event.path} "
                  f"in {format_duration(event.seconds)}")
