"""VS Code through the guarded channel: pydevd talks to the agent over a socketpair.

debugpy normally runs an adapter subprocess that listens on a loopback port for VS Code
until the service exits; any local user (or another container in the pod) could connect
to it with no key. prodbug does not start that adapter, and opens no port at all. It runs
pydevd, the debugger inside debugpy, as its own in-process adapter (pydevd speaks the
Debug Adapter Protocol itself, which is what ``debugpy.listen(in_process_debug_adapter=
True)`` relies on) in client mode, and hands it one end of a ``socket.socketpair()``
instead of a TCP connection: ``pydevd.start_client`` is replaced for the duration of the
``settrace`` call. The agent keeps the other end. Nothing in the process listens, so
nothing can be reached, raced or flooded by another local user.

VS Code's DAP messages reach pydevd only as ``dap.send`` requests from a debugger key.
Each is checked (strict ``Content-Length`` framing, a JSON object that is a request, ids
of the right types, a sequence number below ours) and re-framed by the agent, so a client
cannot desynchronise pydevd's reader or crash it with a malformed argument; the host's
stdout/stderr are never redirected (``redirectOutput`` is forced off). When VS Code's
channel ends for any reason (VS Code detached, the operator vanished, the session
expired) the agent sends pydevd a ``disconnect`` of its own: breakpoints are removed and
every stopped thread resumes. The next ``prodbug vscode`` reuses the same pydevd.
pydevd can be set up once per process: if it ever fails, the agent says so and does not
retry (a half set-up pydevd would trace every thread with nobody attached).
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

from prodbug.agent.foreign_trace import pydevd_environment

__all__ = ["DEBUGPY", "DapChannel", "DapSession", "Debugpy", "check_request", "frame",
           "is_own_thread", "slow_tracing", "split_messages", "untraced"]

_log = logging.getLogger("prodbug.agent")
_READ = 256 * 1024
#: A DAP message bigger than this is not one pydevd or VS Code would send: the stream is
#: corrupt, and the channel (or, from pydevd, the debugger) ends rather than buffer it.
MAX_DAP_MESSAGE = 64 << 20
#: Our own requests to pydevd use sequence numbers no client reaches.
_OWN_SEQ_BASE = 1 << 30


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
    """Take whole framed messages off the front of ``buffer``; yields their bodies.

    The header must be exactly one ``Content-Length: N`` line (spelled as pydevd's reader
    expects it: a header the two sides read differently would desynchronise pydevd's
    stream for good). Raises ValueError on anything else or a length above
    MAX_DAP_MESSAGE.
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 256:
                raise ValueError("no DAP header in the first 256 bytes")
            return
        header = bytes(buffer[:end])
        if not header.startswith(b"Content-Length: ") or b"\r\n" in header or \
                not header[16:].isdigit() or len(header) > 40:
            raise ValueError(f"not a DAP header: {header[:60]!r}")
        length = int(header[16:])
        if length > MAX_DAP_MESSAGE:
            raise ValueError(f"a DAP message of {length} bytes is too big")
        total = end + 4 + length
        if len(buffer) < total:
            return
        body = bytes(buffer[end + 4:total])
        del buffer[:total]
        yield body


def _body(message: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(message)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def frame(body: bytes) -> bytes:
    """One DAP message on the wire."""
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


#: DAP arguments that pydevd expects to be integers (a string there kills its reader).
_INT_ARGUMENTS = ("threadId", "frameId", "variablesReference", "levels", "startFrame",
                  "count", "start", "targetId", "line", "column")


def check_request(body: bytes, thread_ids: set[int] | frozenset[int] = frozenset()
                  ) -> tuple[bytes | None, dict[str, Any] | None]:
    """A VS Code message as it may go to pydevd, or (None, error response for VS Code).

    ``thread_ids`` are the DAP thread ids pydevd has reported: pydevd fails (for good) on a
    thread id it never gave out. Raises ValueError when it is not a DAP request at all
    (the channel then ends).
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("a DAP message that is not JSON") from None
    if type(obj) is not dict or obj.get("type") != "request" or \
            type(obj.get("command")) is not str or type(obj.get("seq")) is not int:
        raise ValueError("a DAP message that is not a request")
    seq, command = obj["seq"], obj["command"]
    if not 0 <= seq < _OWN_SEQ_BASE:
        raise ValueError(f"DAP seq {seq} is out of range")
    arguments = obj.get("arguments", {})
    problem = None
    if type(arguments) is not dict:
        problem = "arguments must be an object"
    else:
        for name in _INT_ARGUMENTS:
            value = arguments.get(name)
            if value is not None and (type(value) is not int or abs(value) > 1 << 62) and \
                    not (name == "threadId" and value == "*"):
                problem = f"{name} must be an integer"
                break
        thread = arguments.get("threadId")
        if problem is None and type(thread) is int and thread not in thread_ids:
            problem = f"no thread {thread} (ask 'threads' for the ids)"
        options = arguments.get("debugOptions")
        if problem is None and command in ("attach", "launch") and (
                arguments.get("redirectOutput", False) or
                (type(options) is list and "RedirectOutput" in options)):
            # pydevd would replace the host's sys.stdout/stderr for the session.
            arguments["redirectOutput"] = False
            if type(options) is list:
                arguments["debugOptions"] = [o for o in options if o != "RedirectOutput"]
            return json.dumps(obj).encode(), None
    if problem is not None:
        return None, {"seq": 0, "type": "response", "request_seq": seq, "success": False,
                      "command": command, "message": f"prodbug refused it: {problem}"}
    return body, None


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
        #: The session whose channel pydevd serves (a late watchdog must not detach the
        #: next session's VS Code).
        self.owner: str | None = None
        self._tried = False
        #: DAP thread ids pydevd has given out (threads replies, thread/stopped events).
        self.thread_ids: set[int] = set()

    def ensure(self, notify: Callable[[], None], log_file: Path) -> None:
        """Connect pydevd in the background if it is not connected yet; pydevd's own
        messages go to ``log_file`` (with its pid added), never to the host's stderr."""
        with self._lock:
            if self.state in ("starting", "ready"):
                return
            if self._tried:  # pydevd is set up once per process: a failure is final
                self.error = (f"{self.error or 'it failed'}; the debugger cannot be set up "
                              f"twice in one process: restart the service to debug it again")
                self.state = "failed"
                notify()
                return
            self._tried = True
            self.state, self.error = "starting", None
        untraced(threading.Thread(target=self._start, args=(notify, log_file),
                                  name="prodbug-debugpy", daemon=True)).start()

    def _start(self, notify: Callable[[], None], log_file: Path) -> None:
        started = time.perf_counter()
        ours, theirs = socket.socketpair()
        try:
            with pydevd_environment(str(log_file)):
                self._connect(theirs)
            ours.settimeout(5)  # pydevd's reader drains at once; never wait long
            self.conn = ours
            self.started_at = time.time()
            self.attach_ms = round((time.perf_counter() - started) * 1000, 1)
            self.state = "ready"
        except Exception as exc:  # reported to the operator; the host goes on
            _log.warning("debugpy did not start", exc_info=True)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            ours.close()
            theirs.close()
        notify()

    @staticmethod
    def _connect(theirs: socket.socket) -> None:
        """pydevd.settrace in client mode, handed ``theirs`` instead of a TCP connection."""
        pydevd = _import_pydevd()
        handed = [theirs]

        def start_client(host: str, port: int) -> socket.socket:
            if not handed:
                raise OSError("prodbug hands pydevd one connection, once")
            return handed.pop()

        original = pydevd.start_client
        pydevd.start_client = start_client
        try:
            pydevd.settrace(
                host="prodbug", port=0, suspend=False, trace_only_current_thread=False,
                patch_multiprocessing=False,  # the host's children stay its own
                block_until_connected=True, wait_for_ready_to_run=False,
                notify_stdin=False,
                dont_trace_start_patterns=(os.path.dirname(_debugpy_file()),),
                dont_trace_end_patterns=("debugpy_launcher.py",))
        finally:
            pydevd.start_client = original
        if handed:
            raise RuntimeError("pydevd did not take the connection prodbug gave it")

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
            for body in split_messages(self._inbox):
                obj = _body(body)
                self._note_threads(obj)
                if obj.get("type") == "response":
                    with self._send_lock:
                        own = obj.get("request_seq") in self._own_requests
                        self._own_requests.discard(obj.get("request_seq"))
                    if own:
                        continue
                yield frame(body)
        except ValueError as exc:
            self._lost(f"pydevd's stream is corrupt ({exc})")

    def _note_threads(self, obj: dict[str, Any]) -> None:
        body = obj.get("body")
        if type(body) is not dict:
            return
        found = [t.get("id") for t in body.get("threads", ()) if type(t) is dict] \
            if obj.get("command") == "threads" and type(body.get("threads")) is list else \
            [body.get("threadId")]
        exited = obj.get("event") == "thread" and body.get("reason") == "exited"
        for ident in found:
            if type(ident) is int:
                if exited:
                    self.thread_ids.discard(ident)
                elif len(self.thread_ids) < 100_000:
                    self.thread_ids.add(ident)

    def send(self, message: bytes) -> None:
        conn = self.conn
        if conn is None:
            raise OSError("pydevd is not connected")
        with self._send_lock:
            try:
                conn.sendall(message)
            except OSError as exc:
                # Part of a message may be in pydevd's stream now: nothing after it could
                # be read right, so this debugger is done (said, never left half-working).
                self._lost(f"pydevd stopped reading ({exc}); restart the service to debug "
                           f"it again")
                raise

    def release(self, owner: str | None = None) -> None:
        """Detach the debugger: breakpoints off, every stopped thread resumes. With
        ``owner``, only if that session still owns the debugger."""
        if self.conn is None or (owner is not None and owner != self.owner):
            return
        with self._send_lock:
            self._own_seq += 1
            seq = self._own_seq
            self._own_requests.add(seq)
            if len(self._own_requests) > 64:  # answers that never came: do not grow for ever
                self._own_requests = set(sorted(self._own_requests)[-16:])
        with contextlib.suppress(OSError):
            self.send(frame(json.dumps({
                "seq": seq, "type": "request", "command": "disconnect",
                "arguments": {"restart": False, "terminateDebuggee": False}}).encode()))

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


def _import_pydevd() -> Any:
    """Import debugpy's pydevd (inside ``pydevd_environment``), configured for prodbug."""
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

    return pydevd


#: pydevd can be set up once per process, so its state is the process's, not an agent's.
DEBUGPY = Debugpy()


class DapChannel:
    """One VS Code connection, relayed as whole messages over the one pydevd connection."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(4)
        self.inbox = bytearray()

    def take(self, data: bytes) -> list[bytes]:
        """Whole message bodies once ``data`` is added; ValueError if it is not DAP."""
        self.inbox += data
        if len(self.inbox) > MAX_DAP_MESSAGE + 256:
            raise ValueError("more than a DAP message's worth of bytes without an end")
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
