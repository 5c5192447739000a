"""``prodbug run [options] -- CMD ARGS...``: start CMD with the agent in its Python processes."""

from __future__ import annotations

import argparse

from prodbug.errors import ConfigError

__all__ = ["configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``run``'s options to its sub-parser (keep this light: no heavy imports)."""
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")


def main(args: argparse.Namespace) -> int:
    """Run the command; returns an exit code (or execs and never returns)."""
    raise ConfigError("prodbug run is not built yet")
