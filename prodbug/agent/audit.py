"""The audit trail: one record per request and per refused handshake."""

from __future__ import annotations

import datetime
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]

_log = logging.getLogger("prodbug.audit")
_agent_log = logging.getLogger("prodbug.agent")


class AuditLog:
    """Writes each record to the ``prodbug.audit`` logger and, if set, a JSON-lines file."""

    def __init__(self, path: Path | None, keep: int = 200) -> None:
        self.path = path
        self._file_failed = False
        #: The latest records, for the ``audit`` command: who has been doing what here.
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(self, event: str, **fields: Any) -> None:
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        _log.info("%s %s", event, text)
        line = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        self.recent.append(line)
        if self.path is None:
            return
        try:
            # Opened per record so that logrotate's moves are followed without a signal.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")
            self._file_failed = False
        except OSError as exc:
            if not self._file_failed:  # say it once, not once per request
                _agent_log.warning("cannot write audit log %s: %s", self.path, exc)
            self._file_failed = True
