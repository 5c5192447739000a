"""The processes of one service: who they are, which one is the door, and when it dies.

A service is the set of processes with the same service name (``PRODBUG_SERVICE``, else
the fixed ``PRODBUG_LISTEN`` address: see ``AgentConfig.service_name``) in one user's
registry directory. The one that holds the TCP port is the door; the others are members
that the door reaches over their ipc endpoints. A member watches the door's process (a
pidfd: no wake-up until it exits) and, when it exits, tries to take the port over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prodbug import registry

__all__ = ["DoorWatch", "find_door", "service_entries"]

#: Without pidfds (Linux < 5.3, other systems): how often a member looks at the door.
FALLBACK_CHECK_MS = 2000


def service_entries(runtime_dir: Path, service: str | None) -> Iterator[dict[str, Any]]:
    """Registry entries of the live processes of ``service`` (trusted ones only)."""
    if service is None:
        return
    for entry in registry.list_entries(runtime_dir):
        if entry.get("service") == service:
            yield entry


def find_door(runtime_dir: Path, service: str | None, *, exclude: int) -> dict[str, Any] | None:
    """The entry of the service's door (the live member that holds its TCP port), if any."""
    for entry in service_entries(runtime_dir, service):
        if entry.get("pid") != exclude and entry.get("role") == "door" \
                and registry.pid_alive(int(entry["pid"])):
            return entry
    return None


class DoorWatch:
    """Tells a member when the door's process has exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        opener = getattr(os, "pidfd_open", None)
        if opener is not None:
            with contextlib.suppress(OSError):
                self.fd = opener(pid)

    def poll_timeout(self, timeout: int | None) -> int | None:
        """Shortened to the fallback check when there is no pidfd to poll."""
        if self.fd is not None:
            return timeout
        return FALLBACK_CHECK_MS if timeout is None else min(timeout, FALLBACK_CHECK_MS)

    def door_gone(self, events: dict[Any, int]) -> bool:
        """Whether the door has exited (its pidfd is readable, or the pid is gone)."""
        if self.fd is not None:
            return self.fd in events
        return not registry.pid_alive(self.pid)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
