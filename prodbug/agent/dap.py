"""VS Code through the guarded channel: pydevd connected to the agent, and to nothing else.

debugpy normally runs an adapter subprocess that listens on a loopback port for VS Code
until the service exits; any local user (or another container in the pod) could connect
to it with no key. prodbug does not start that adapter. It runs pydevd, the debugger inside
debugpy, as its own in-process adapter (pydevd speaks the Debug Adapter Protocol itself,
which is what ``debugpy.listen(in_process_debug_adapter=True)`` relies on) and makes pydevd
*connect out* to a one-shot socket the agent listens on:

1. the agent binds ``127.0.0.1:0`` with a backlog, and calls ``pydevd.settrace`` with that
   address (pydevd's client mode);
2. it accepts connections until it gets the one whose peer address is pydevd's own socket,
   closing any other, then closes the listener. From then on no port in the process accepts
   a debugger: the only way to pydevd is that one connection, owned by the agent thread.

VS Code's DAP messages reach pydevd only as ``dap.send`` requests from a debugger key,
framed whole (``Content-Length``) so that a channel that dies mid-message cannot corrupt
the stream; pydevd's messages go back as events on the session's route. When VS Code's
channel ends for any reason (VS Code detached, the operator vanished, the session expired)
the agent sends pydevd a ``disconnect`` of its own: breakpoints are removed and every
stopped thread resumes. The next ``prodbug vscode`` reuses the same connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEBUGPY", "DapChannel", "DapSession", "Debugpy", "is_own_thread", "slow_tracing",
           "split_messages", "untraced"]

_log = logging.getLogger("prodbug.agent")
_READ = 256 * 1024
#: A DAP message bigger than this is not one pydevd or VS Code would send: the stream is
#: corrupt, and the channel (or, from pydevd, the debugger) ends rather than buffer it.
MAX_DAP_MESSAGE = 64 << 20
#: Our own requests to pydevd use sequence numbers no client reaches.
_OWN_SEQ_BASE = 1 << 30
_ACCEPT_TIMEOUT = 10.0


def untraced(thread: threading.Thread) -> threading.Thread:
    """Mark one of our threads so that no debugger ever stops it: debugpy (pydevd) never
    traces or suspends it (a breakpoint that stops "all threads" must not stop the thread
    relaying the session), and prodbug's own pdb hooks pass it by (``is_own_thread``)."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    thread.prodbug_own = True  # type: ignore[attr-defined]
    return thread


def is_own_thread(thread: threading.Thread | None = None) -> bool:
    """Whether ``thread`` (default: the calling one) is prodbug's or the debugger's own."""
    thread = thread if thread is not None else threading.current_thread()
    attrs = vars(thread)  # a plain dict read: no host code, whatever the Thread subclass
    return bool(attrs.get("prodbug_own") or attrs.get("is_pydev_daemon_thread"))


def slow_tracing() -> bool:
    """Before 3.12 debugpy traces with settrace: the whole process runs several times
    slower from the first attach until it restarts (about 3x measured here on 3.11)."""
    return sys.version_info < (3, 12)


def split_messages(buffer: bytearray) -> Iterator[bytes]:
    """Take whole ``Content-Length`` framed messages off the front of ``buffer``.

    Raises ValueError on a header that is not DAP or a length above MAX_DAP_MESSAGE.
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 4096:
                raise ValueError("no DAP header in the first 4 KiB")
            return
        length = None
        for line in bytes(buffer[:end]).split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise ValueError("Content-Length is not a number") from None
        if length is None or not 0 <= length <= MAX_DAP_MESSAGE:
            raise ValueError(f"bad DAP header {bytes(buffer[:min(end, 80)])!r}")
        total = end + 4 + length
        if len(buffer) < total:
            return
        message = bytes(buffer[:total])
        del buffer[:total]
        yield message


def _body(message: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(message[message.index(b"\r\n\r\n") + 4:])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Debugpy:
    """pydevd in this process: connected at most once, then reused by every session."""

    def __init__(self) -> None:
        self.state = "off"  # off | starting | ready | failed
        self.started_at: float | None = None
        self.attach_ms: float | None = None
        self.error: str | None = None
        self.conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._inbox = bytearray()
        self._own_seq = _OWN_SEQ_BASE
        self._own_requests: set[int] = set()
        self._send_lock = threading.Lock()  # the agent thread, and the watchdog

    def ensure(self, notify: Callable[[], None], log_file: Path) -> None:
        """Connect pydevd in the background if it is not connected yet; pydevd's own
        messages go to ``log_file`` (with its pid added), never to the host's stderr."""
        with self._lock:
            if self.state in ("starting", "ready"):
                return
            self.state, self.error = "starting", None
        untraced(threading.Thread(target=self._start, args=(notify, log_file),
                                  name="prodbug-debugpy", daemon=True)).start()

    def _start(self, notify: Callable[[], None], log_file: Path) -> None:
        started = time.perf_counter()
        listener: socket.socket | None = None
        environ_before = set(os.environ)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            pydevd = _import_pydevd(log_file)
            host, port = listener.getsockname()
            pydevd.settrace(
                host=host, port=port, suspend=False, trace_only_current_thread=False,
                patch_multiprocessing=False,  # the host's children stay its own
                block_until_connected=True, wait_for_ready_to_run=False, notify_stdin=False,
                dont_trace_start_patterns=(os.path.dirname(_debugpy_file()),),
                dont_trace_end_patterns=("debugpy_launcher.py",))
            own = _pydevd_address(pydevd)
            self.conn = _accept_own(listener, own)
            self.conn.setblocking(True)
            self.conn.settimeout(5)  # pydevd's reader drains at once; never wait long
            self.started_at = time.time()
            self.attach_ms = round((time.perf_counter() - started) * 1000, 1)
            self.state = "ready"
        except Exception as exc:  # reported to the operator; the host goes on
            _log.warning("debugpy did not start", exc_info=True)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            if listener is not None:
                listener.close()  # no port stays open, whatever happened
            # pydevd exports settings for the children it would debug; ours stay unpatched,
            # and the host's children must not inherit any of it.
            for name in set(os.environ) - environ_before:
                if name.startswith(("PYDEVD", "DEBUGPY")):
                    os.environ.pop(name, None)
        notify()

    def fileno(self) -> int | None:
        conn = self.conn
        return conn.fileno() if conn is not None and self.state == "ready" else None

    def read(self) -> Iterator[bytes]:
        """pydevd's whole messages (raw bytes, framed); answers to our own requests are
        consumed here. Marks the debugger failed when pydevd's side closed."""
        conn = self.conn
        if conn is None:
            return
        try:
            data = conn.recv(_READ)
        except (TimeoutError, InterruptedError, BlockingIOError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost("pydevd closed its connection")
            return
        self._inbox += data
        try:
            for message in split_messages(self._inbox):
                body = _body(message)
                if body.get("type") == "response" and body.get("request_seq") in \
                        self._own_requests:
                    self._own_requests.discard(body["request_seq"])
                    continue
                yield message
        except ValueError as exc:
            self._lost(f"pydevd's stream is corrupt ({exc})")

    def send(self, message: bytes) -> None:
        conn = self.conn
        if conn is None:
            raise OSError("pydevd is not connected")
        with self._send_lock:
            conn.sendall(message)

    def release(self) -> None:
        """Detach the debugger: breakpoints off, every stopped thread resumes."""
        if self.conn is None:
            return
        with self._send_lock:
            self._own_seq += 1
            seq = self._own_seq
            self._own_requests.add(seq)
            if len(self._own_requests) > 64:  # answers that never came: do not grow for ever
                self._own_requests = set(sorted(self._own_requests)[-16:])
        with contextlib.suppress(OSError):
            self.send(_frame({"seq": seq, "type": "request", "command": "disconnect",
                              "arguments": {"restart": False, "terminateDebuggee": False}}))

    def _lost(self, why: str) -> None:
        self.state, self.error = "failed", why
        self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def forget_after_fork(self) -> None:
        """In a forked child: the connection is the parent's pydevd's, not ours."""
        if self.state in ("ready", "starting"):
            self.state, self.error = "failed", "inherited through fork from the parent"
        self.close()

    def facts(self) -> dict[str, Any]:
        return {"debugpy": self.state, "debugpy_since": self.started_at,
                "debugpy_error": self.error, "debugpy_attach_ms": self.attach_ms}


def _debugpy_file() -> str:
    import debugpy

    return str(debugpy.__file__)


def _import_pydevd(log_file: Path) -> Any:
    """Import debugpy's pydevd with its messages sent to ``log_file``, leaving the host's
    environment as it was (so that its child processes never inherit PYDEVD_* settings)."""
    wanted = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYDEVD_DEBUG_FILE": str(log_file)}
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            os.environ.setdefault(name, value)
        import debugpy

        exe = os.path.basename(sys.executable or "")
        if not exe.startswith("python"):  # e.g. uwsgi: debugpy's helpers need a Python
            python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}") \
                or shutil.which("python3")
            if python:
                debugpy.configure(python=python)
        debugpy.configure(subProcess=False)
        import debugpy.server.api  # puts pydevd on the path, speaking DAP
        import pydevd  # type: ignore[import-not-found]
    finally:
        for name, before in saved.items():
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before
    return pydevd


def _pydevd_address(pydevd: Any) -> tuple[str, int] | None:
    debugger = pydevd.get_global_debugger()
    sock = getattr(debugger, "_client_socket", None)
    try:
        return tuple(sock.getsockname()[:2]) if sock is not None else None
    except OSError:
        return None


def _accept_own(listener: socket.socket, own: tuple[str, int] | None) -> socket.socket:
    """The connection pydevd made; anything else that raced to the port is closed."""
    if own is None:
        raise RuntimeError("cannot tell pydevd's connection from another local process's")
    deadline = time.monotonic() + _ACCEPT_TIMEOUT
    while True:
        listener.settimeout(max(deadline - time.monotonic(), 0.01))
        conn, peer = listener.accept()  # TimeoutError past the deadline: start fails
        if tuple(peer[:2]) == own:
            return conn
        _log.warning("refused a connection to prodbug's debugger socket from %s:%s (not "
                     "this process's debugger)", peer[0], peer[1])
        conn.close()


#: pydevd can be set up once per process, so its state is the process's, not an agent's.
DEBUGPY = Debugpy()


class DapChannel:
    """One VS Code connection, relayed as whole messages over the one pydevd connection."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(4)
        self.inbox = bytearray()

    def take(self, data: bytes) -> list[bytes]:
        """Whole messages once ``data`` is added; ValueError if the stream is not DAP."""
        self.inbox += data
        return list(split_messages(self.inbox))


class DapSession:
    """One operator's ``prodbug vscode``: any number of channels over time, one at a time."""

    mode = "vscode"

    def __init__(self, key_id: str, key_name: str, heartbeat: float) -> None:
        self.id = secrets.token_hex(8)
        self.key_id = key_id
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
