"""VS Code through the guarded channel: debugpy's adapter, relayed byte for byte.

debugpy is started once per process (``debugpy.listen`` can only be called once) on
127.0.0.1 with a free port, in a thread of its own because it takes a while. Each VS Code
connection the operator's CLI accepts becomes a *channel*: the agent opens a TCP
connection to the adapter on the process's loopback and relays the Debug Adapter Protocol
bytes over the ZeroMQ connection. Nothing new is reachable from outside the process.

When the operator goes (CLI killed, network lost, Ctrl-C), the agent closes the channel's
adapter connection; debugpy treats that as the client leaving: breakpoints are removed
and stopped threads resume (tests/test_vscode.py checks it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEBUGPY", "DapChannel", "DapSession", "Debugpy", "slow_tracing", "untraced"]

_log = logging.getLogger("prodbug.agent")
_READ = 256 * 1024


def untraced(thread: threading.Thread) -> threading.Thread:
    """Mark one of our threads so that debugpy (pydevd) never traces or suspends it: a
    breakpoint that stops "all threads" must not stop the thread relaying the session."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    return thread


def slow_tracing() -> bool:
    """Before 3.12 debugpy traces with settrace: the whole process runs several times
    slower from ``listen()`` until it restarts (about 8x measured here on 3.11)."""
    return sys.version_info < (3, 12)


class Debugpy:
    """debugpy in this process: started at most once, then reused by every session."""

    def __init__(self) -> None:
        self.state = "off"  # off | starting | ready | failed
        self.port: int | None = None
        self.started_at: float | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def ensure(self, notify: Callable[[], None], log_file: Path) -> None:
        """Start debugpy in the background if it is not running yet; pydevd's own
        messages go to ``log_file`` (with its pid added), never to the host's stderr."""
        with self._lock:
            if self.state in ("starting", "ready"):
                return
            self.state, self.error = "starting", None
        untraced(threading.Thread(target=self._start, args=(notify, log_file),
                                  name="prodbug-debugpy", daemon=True)).start()

    def _start(self, notify: Callable[[], None], log_file: Path) -> None:
        try:
            # pydevd writes warnings to the host's stderr unless told otherwise.
            os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            os.environ.setdefault("PYDEVD_DEBUG_FILE", str(log_file))
            import debugpy

            exe = os.path.basename(sys.executable or "")
            if not exe.startswith("python"):  # e.g. uwsgi: the adapter needs a real Python
                python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}") \
                    or shutil.which("python3")
                if python:
                    debugpy.configure(python=python)
            _host, port = debugpy.listen(("127.0.0.1", 0))
            self.port = int(port)
            self.started_at = time.time()
            self.state = "ready"
        except Exception as exc:  # reported to the operator; the host goes on
            _log.warning("debugpy did not start", exc_info=True)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        notify()

    def facts(self) -> dict[str, Any]:
        return {"debugpy": self.state, "debugpy_port": self.port,
                "debugpy_since": self.started_at, "debugpy_error": self.error}


#: debugpy can listen once per process, so its state is the process's, not an agent's.
DEBUGPY = Debugpy()


class DapChannel:
    """One VS Code connection: a TCP connection to the adapter, owned by the agent thread."""

    def __init__(self, port: int) -> None:
        self.id = secrets.token_hex(4)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(5)  # a send to the adapter on loopback never waits long

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes | None:
        """What the adapter sent; b"" when it closed the connection; None if nothing yet."""
        try:
            return self.sock.recv(_READ)
        except (TimeoutError, InterruptedError, BlockingIOError):
            return None
        except OSError:
            return b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class DapSession:
    """One operator's ``prodbug vscode``: any number of channels over time, one at a time."""

    mode = "vscode"

    def __init__(self, key_name: str, heartbeat: float) -> None:
        self.id = secrets.token_hex(6)
        self.key_name = key_name
        self.opened_at = time.time()
        self.heartbeat = heartbeat
        self.state = "open"
        self.reason = ""
        self.channels: dict[str, DapChannel] = {}
        self.ended = threading.Event()
        self.last_seen = time.monotonic()
        self.announced_ready = False

    def check_timeouts(self, now: float) -> None:
        if not self.ended.is_set() and now - self.last_seen > self.heartbeat:
            self.end(f"the operator is gone (no heartbeat for {self.heartbeat:g}s): "
                     f"VS Code's connection closed, threads resume")

    def end(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.reason = reason
        self.state = "ended"
        self.ended.set()

    def facts(self) -> dict[str, Any]:
        return {"session": self.id, "mode": self.mode, "key": self.key_name,
                "opened_at": self.opened_at, "state": self.state}
