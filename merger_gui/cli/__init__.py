"""The headless face of core and engine: ``merger-gui COMMAND …``; no command starts the GUI."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from merger_gui.cli.common import CommandLineParser
from merger_gui.core.errors import UserError

# Subcommand name -> module in this package exposing ``add_parser(subparsers)``.
COMMANDS = ("validate", "plan", "estimate", "merge")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The CLI parser; only ``commands`` are imported (a merge need not load the estimator)."""
    parser = CommandLineParser(
        prog="merger-gui",
        description="Design and run mergekit-compatible LLM merges. Without a command, opens the designer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"merger_gui.cli.{name}_command").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help"):
        from merger_gui.qt.app import main as gui_main  # Qt only when the GUI is asked for

        return gui_main(args_list)
    chosen = (args_list[0],) if args_list[0] in COMMANDS else COMMANDS
    args = build_parser(chosen).parse_args(args_list)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
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
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
