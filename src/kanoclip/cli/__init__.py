"""The `kanoclip` command: one thin module per command family, every flag generated from the config field it sets
(`cli.flags`); this module only dispatches, and says errors and warnings in one line each."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from kanoclip._version import __version__
from kanoclip.cli.adapt import ADAPT
from kanoclip.cli.calibrate import CALIBRATE, REFERENCE
from kanoclip.cli.common import EXIT_DISK_FULL
from kanoclip.cli.convert import CONVERT
from kanoclip.cli.detect import DETECT
from kanoclip.cli.evaluate import EVALUATE, REPRODUCE
from kanoclip.cli.export import EXPORT
from kanoclip.cli.flags import Command, Parsed, add_command, print_config, resolve
from kanoclip.cli.knowledge import KNOWLEDGE
from kanoclip.cli.model import INFO, MODELS
from kanoclip.cli.share import PULL, PUSH
from kanoclip.cli.station import HISTORY, SERVE, STATION_COMMANDS, WATCH
from kanoclip.cli.train import TRAIN
from kanoclip.errors import KanoclipError

COMMANDS: tuple[Command, ...] = (
    INFO,
    MODELS,
    DETECT,
    EVALUATE,
    TRAIN,
    ADAPT,
    SERVE,
    WATCH,
    HISTORY,
    STATION_COMMANDS,
    CALIBRATE,
    REFERENCE,
    EXPORT,
    PUSH,
    PULL,
    CONVERT,
    REPRODUCE,
    KNOWLEDGE,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanoclip",
        description="Zero-shot image anomaly detection with KAnoCLIP on a frozen CLIP.",
        epilog="Run `kanoclip COMMAND --help` for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"kanoclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        add_command(sub, command)
    return parser


def parse(argv: Sequence[str]) -> Parsed:
    """The configs a command line fills, without running it (tests and tools)."""
    args = build_parser().parse_args(argv)
    return resolve(args._command, args)


def one_line_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings as `kanoclip: warning: ...`, one line each, without the source line that raised them."""
    text = " ".join(str(message).split())
    print(f"kanoclip: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = one_line_warning
    warnings.simplefilter("default")
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`kanoclip history ... | head -1`): end quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="kanoclip: %(levelname)s: %(message)s"
    )
    command: Command = args._command
    try:
        parsed = resolve(command, args)
        if args.print_config:
            return print_config(parsed)
        assert command.run is not None
        return int(command.run(parsed))
    except KanoclipError as e:
        print(f"kanoclip: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"kanoclip: error: the disk is full ({e.filename or 'writing outputs'}): free some space and run the same "
            "command again; what was finished is kept (detect resumes where it stopped)",
            file=sys.stderr,
        )
        return EXIT_DISK_FULL
    except KeyboardInterrupt:
        print("kanoclip: interrupted", file=sys.stderr)
        return 130
