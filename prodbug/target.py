"""TARGET strings (``HOST``, ``HOST:PORT``, ``tcp://``, ``ipc://``, ``--pid N``) to endpoints."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace

from prodbug import registry
from prodbug.config import DEFAULT_PORT
from prodbug.errors import ConfigError, TargetUnreachable

__all__ = ["Target", "resolve_target"]

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")


@dataclass(frozen=True)
class Target:
    """Where to send requests, and how to name it in messages."""

    endpoint: str
    pid: int | None = None
    #: ``pid`` is another process of the service behind ``endpoint`` (its door relays).
    relayed: bool = False
    #: A scheme whose carrier opens the way first (``ssh``, ``kube``: connect.CARRIERS);
    #: ``address`` is the rest of the TARGET after ``SCHEME://``.
    scheme: str | None = None
    address: str = ""

    @property
    def is_tcp(self) -> bool:
        return self.endpoint.startswith("tcp://")

    @property
    def label(self) -> str:
        """How messages name it."""
        if self.scheme is not None:
            return f"{self.scheme}://{self.address}"
        if self.pid is not None and not self.relayed:
            return f"pid {self.pid}"
        where = self.endpoint.removeprefix("tcp://")
        return f"pid {self.pid} at {where}" if self.relayed else where

    @property
    def request_pid(self) -> int | None:
        """The pid every request must name (only when the door is to relay it)."""
        return self.pid if self.relayed else None


def _warn(notes: list[str]) -> None:
    # Someone else's files where ours are looked for: worth a line even when we found ours.
    for note in notes:
        print(f"prodbug: {note}", file=sys.stderr)


def resolve_target(text: str | None, pid: int | None = None) -> Target:
    """Turn the CLI's TARGET and ``--pid`` into an endpoint.

    ``--pid`` alone is a process on this host (found in the registry, no keys); with a
    TARGET it is a process of the service behind that TARGET, reached through its door.
    """
    if pid is not None and pid <= 0:
        raise ConfigError(f"--pid {pid} is not a process id")
    if pid is not None and text:
        base = resolve_target(text)
        # Through a carrier, the carrier decides (ssh can reach a pid's own ipc socket).
        return replace(base, pid=pid, relayed=base.scheme is None)
    if pid is not None:
        notes: list[str] = []
        entry = registry.find_entry(pid, notes)
        _warn(notes)
        return Target(str(entry["endpoint"]), pid)
    if not text:
        notes = []
        entries = list(registry.list_entries(notes=notes))
        _warn(notes)
        if len(entries) == 1:
            return Target(str(entries[0]["endpoint"]), int(entries[0]["pid"]))
        if not entries:
            raise TargetUnreachable(
                f"no local agents in {registry.default_runtime_dir()}; give a TARGET "
                f"(HOST[:PORT], tcp://HOST:PORT, ipc://PATH) or --pid N")
        pids = ", ".join(str(e["pid"]) for e in entries)
        raise ConfigError(f"{len(entries)} local agents (pids {pids}): choose one with --pid N")
    if text.startswith("ipc://"):
        return Target(text)
    if text.startswith("tcp://"):
        rest = text[len("tcp://"):]
    elif text.startswith(("ssh://", "kube://")):
        scheme, _, address = text.partition("://")
        if not address:
            raise ConfigError(f'TARGET "{text}" names no host (e.g. {scheme}://api-7f9)')
        return Target("", scheme=scheme, address=address)
    elif "://" in text:
        raise ConfigError(f'unknown scheme in TARGET "{text}"; use tcp://, ipc:// or HOST:PORT')
    else:
        rest = text
    if rest.isdigit():
        raise ConfigError(f'TARGET "{text}" looks like a pid: use --pid {rest}, or HOST:PORT')
    match = _HOST_PORT.match(rest)
    if match is None:
        raise ConfigError(f'TARGET "{text}" is not HOST, HOST:PORT, tcp://HOST:PORT or ipc://PATH')
    port = int(match[2]) if match[2] else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range (1-65535)")
    return Target(f"tcp://{match[1]}:{port}")
