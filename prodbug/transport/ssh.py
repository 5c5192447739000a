"""``ssh://`` targets (not built yet)."""

from __future__ import annotations

from prodbug.config import DEFAULT_PORT
from prodbug.connect import CARRIERS, Carrier
from prodbug.errors import ConfigError
from prodbug.target import Target


def open_ssh(target: Target, timeout: float) -> Carrier:
    raise ConfigError(
        f"ssh:// targets are not supported yet; tunnel instead: ssh -L {DEFAULT_PORT}:"
        f"127.0.0.1:{DEFAULT_PORT} HOST, then use 127.0.0.1:{DEFAULT_PORT}")


CARRIERS["ssh"] = open_ssh
