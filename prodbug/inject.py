"""``prodbug inject PID``: load the agent into a running Python process that never imported it."""

from __future__ import annotations

import argparse

from prodbug.errors import ConfigError

__all__ = ["configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``run``'s options to its sub-parser (keep this light: no heavy imports)."""
    parser.add_argument("pid", type=int, metavar="PID")


def main(args: argparse.Namespace) -> int:
    """Inject the agent; returns an exit code."""
    raise ConfigError("prodbug inject is not built yet")
