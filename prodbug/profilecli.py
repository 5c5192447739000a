"""(Being built: issue #12.)"""

from __future__ import annotations

import argparse

from prodbug.cli import connection_args
from prodbug.errors import ConfigError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    connection_args(parser)


def main(args: argparse.Namespace) -> int:
    raise ConfigError(f"{args.command}: not available yet")
