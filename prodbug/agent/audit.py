"""The audit trail: one record per request and per refused handshake.

Records go to memory (for ``prodbug audit``), to ``PRODBUG_AUDIT_LOG`` (JSON lines, created
0600, never through a symbolic link) and to the ``prodbug.audit`` logger. That logger does
not propagate to the host's handlers unless ``PRODBUG_AUDIT_PROPAGATE=1``: the host's
handlers take locks that the host's own threads hold (one of them may be stopped in pdb
inside a handler), and their files are often readable by more people than the audit log.
Every field is escaped (control characters, newlines) and bounded, so that nothing a
client sends can forge a line of a log.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "clean_field", "mask_literals"]

_log = logging.getLogger("prodbug.audit")
_log.propagate = os.environ.get("PRODBUG_AUDIT_PROPAGATE", "") in ("1", "true", "yes")
_agent_log = logging.getLogger("prodbug.agent")
_MAX_FIELD = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean_field(value: Any) -> Any:
    """A field as it may be written: strings escaped and cut, numbers and None as they are."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    text = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= _MAX_FIELD else text[:_MAX_FIELD] + "..."


def mask_literals(line: str) -> str:
    """``line`` with the content of its string literals replaced by ``***``.

    A pdb line is Python: tokenize it and mask STRING tokens (f-strings included); a line
    that does not tokenize has its quoted runs masked instead.
    """
    import tokenize  # only pdb sessions have lines to mask

    try:
        out = []
        last = (1, 0)
        tokens = list(tokenize.generate_tokens(io.StringIO(line).readline))
        for tok in tokens:
            if tok.start > last and tok.start[0] == last[0]:
                out.append(line[last[1]:tok.start[1]])
            kind = tokenize.tok_name.get(tok.type, "")
            if kind == "STRING":
                prefix = re.match(r"^[A-Za-z]*", tok.string)
                out.append(f"{prefix[0] if prefix else ''}'***'")
            elif kind == "ERRORTOKEN" and tok.string.strip()[:1] in ("'", '"'):
                raise ValueError("an unterminated string")  # mask from the quote on
            elif kind == "FSTRING_MIDDLE":  # 3.12+: the literal parts of an f-string
                out.append("***" if tok.string else "")
            else:
                out.append(tok.string)
            last = tok.end
        return "".join(out).strip()
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        return re.sub(r"""(['"]).*?(\1|$)""", "'***'", line)


class AuditLog:
    """Writes each record to the ``prodbug.audit`` logger and, if set, a JSON-lines file."""

    def __init__(self, path: Path | None, keep: int = 200) -> None:
        self.path = path
        self._file_failed = False
        #: The latest records, for the ``audit`` command: who has been doing what here.
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(self, event: str, **fields: Any) -> None:
        fields = {k: clean_field(v) for k, v in fields.items()}
        line = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        self.recent.append(line)
        if _log.propagate or _log.handlers:  # nobody listening: do not even format it
            _log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))
        if self.path is None:
            return
        try:
            self._append(self.path, json.dumps(line, default=str) + "\n")
            self._file_failed = False
        except OSError as exc:
            if not self._file_failed:  # say it once, not once per request
                _agent_log.warning("cannot write audit log %s: %s", self.path, exc)
            self._file_failed = True

    @staticmethod
    def _append(path: Path, text: str) -> None:
        # Opened per record so that logrotate's moves are followed without a signal; 0600
        # when created, and never through a link someone else planted at that path.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
