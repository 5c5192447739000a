"""What every kind of session shares (pdb, VS Code, snapshots, logpoints, profiles).

A session belongs to one key, lives while its operator's heartbeats arrive, and ends
once, from any thread, for a reason the operator is told. Kinds differ in what they
arm in the host (``on_end`` undoes it, from whatever thread ends the session), in what
they send while open (``take_events``, in the agent thread) and in whether they stop
threads: those are ``exclusive`` (one at a time per process); the others are not, up to
``SessionDesk``'s limit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["Event", "Session"]

#: (kind, data) of an event for the session's operator.
Event = tuple[str, dict[str, Any]]


class Session:
    """One operator's session in this process."""

    #: The session's kind as operators and the audit trail name it.
    mode: str = "session"
    #: Stops threads (pdb, VS Code): at most one such session per process.
    exclusive: ClassVar[bool] = False
    #: What happens to the host when the heartbeats stop ("the thread goes on").
    after_gone: ClassVar[str] = "nothing of it is left armed"

    def __init__(self, key_id: str, key_name: str, *, heartbeat: float,
                 notify: Callable[[], None] = lambda: None) -> None:
        # secrets.token_hex's own source, without importing secrets: it brings hmac and
        # OpenSSL (~4 MB of the host's memory) for nothing the agent uses.
        self.id = os.urandom(8).hex()
        self.key_id = key_id
        self.key_name = key_name
        self.opened_at = time.time()
        self.heartbeat = heartbeat
        self.state = "open"
        self.reason = ""
        self.ended = threading.Event()
        self.last_seen = time.monotonic()
        self._notify = notify

    def check_timeouts(self, now: float) -> None:
        """End the session if its operator is gone; kinds add their own limits."""
        if not self.ended.is_set() and now - self.last_seen > self.heartbeat:
            self.end(f"the operator is gone (no heartbeat for {self.heartbeat:g}s): "
                     f"{self.after_gone}")

    def end(self, reason: str) -> None:
        """End the session from any thread (idempotent); what it armed is undone at once."""
        if self.ended.is_set():
            return
        self.reason = reason
        self.state = "ended"
        self.ended.set()
        try:
            self.on_end()
        finally:
            self._notify()

    def on_end(self) -> None:
        """Undo what the session armed in the host. Any thread; must not block."""

    def take_events(self) -> list[Event]:
        """In the agent thread: what to send the operator now."""
        return []

    def finish(self) -> None:
        """In the agent thread, once, after the session ended: the last clean-up."""

    def facts(self) -> dict[str, Any]:
        return {"session": self.id, "mode": self.mode, "key": self.key_name,
                "opened_at": self.opened_at, "state": self.state}
