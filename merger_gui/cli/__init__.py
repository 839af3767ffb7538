"""The headless face of core and engine: ``merger-gui COMMAND …``; no command (or a recipe file) starts the GUI."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from merger_gui.cli.common import CommandLineParser, printable
from merger_gui.core.errors import UserError

# Subcommand name -> module in this package exposing ``add_parser(subparsers)``.
COMMANDS = ("validate", "plan", "estimate", "merge", "evaluate", "sweep", "export-gguf", "analyze")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The CLI parser; only ``commands`` are imported (a merge need not load the estimator)."""
    parser = CommandLineParser(
        prog="merger-gui",
        description="Design and run mergekit-compatible LLM merges. Without a command, opens the designer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        module = name.replace("-", "_")  # export-gguf -> export_gguf_command
        importlib.import_module(f"merger_gui.cli.{module}_command").add_parser(subparsers)
    return parser


def opens_designer(args: Sequence[str]) -> bool:
    """Whether ``args`` are the designer's: none, its options, or a recipe file first."""
    if not args:
        return True
    first = args[0]
    if first in COMMANDS or first in ("-h", "--help"):
        return False
    return first.startswith("-") or first.lower().endswith((".yaml", ".yml")) or os.sep in first \
        or Path(first).exists()


def unknown_command(word: str) -> str:
    """The usage error for ``word``, which is neither a command nor a file: the closest command."""
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.5)
    if close:
        return f"error: unknown command {word!r}, did you mean {close[0]}?"
    return f"error: unknown command {word!r} (commands: {', '.join(COMMANDS)}; see `merger-gui --help`)"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if opens_designer(args_list):
        from merger_gui.qt.app import main as gui_main  # Qt only when the GUI is asked for

        return gui_main(args_list)
    if args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help"):
        print(unknown_command(args_list[0]), file=sys.stderr)
        return 2
    chosen = (args_list[0],) if args_list[0] in COMMANDS else COMMANDS
    args = build_parser(chosen).parse_args(args_list)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`merger-gui plan … | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        # Permissions, missing paths, full disks outside the engine's own handling.
        print(printable(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": ")), file=sys.stderr)
        return 1
