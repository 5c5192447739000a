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
every stopped thread resumes.

Once pydevd has answered that disconnect and no VS Code has come back, the agent takes
pydevd down (``stop_pydevd``): its trace functions (every thread's before 3.12,
``threading.settrace``, the ``sys.settrace`` wrapper), its ``sys.monitoring`` tool (3.12+),
its thread-start wrappers and its threads. debugpy's own answer to a debugged process that
stays slow is to restart it: here the host runs at its own speed again after the last
detach. The next VS Code message sets pydevd up afresh over a new socketpair (what VS Code
sends meanwhile waits, in order). If setting it up fails, the agent says so and does not
retry (a half set-up pydevd would trace every thread with nobody attached).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from prodbug.agent.foreign_trace import pydevd_environment, remove_trace_in_threads
from prodbug.agent.session import Session

__all__ = ["DEBUGPY", "DapChannel", "DapSession", "Debugpy", "check_request",
           "forget_pydevd_after_fork", "frame", "is_own_thread", "slow_tracing",
           "split_messages", "stop_pydevd", "untraced"]

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
    slower while VS Code is attached (taken down again after the last detach)."""
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
    """pydevd in this process: set up on the first attach, taken down again (tracing and
    threads) when the last VS Code detaches, set up afresh on the next attach."""

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
        self._send_lock = threading.Lock()  # the agent thread, the watchdog, our threads
        #: The session whose channel pydevd serves (a late watchdog must not detach the
        #: next session's VS Code).
        self.owner: str | None = None
        self._tried = False
        #: DAP thread ids pydevd has given out (threads replies, thread/stopped events).
        self.thread_ids: set[int] = set()
        #: While ``state`` is ready: "on" (pydevd traces), "off" (taken down after the last
        #: detach), or on the way: "disconnecting" (our disconnect not answered yet),
        #: "stopping", "starting".
        self.tracing = "off"
        self._disconnect_seq: int | None = None
        #: VS Code's messages that arrived while pydevd was being taken down or set up.
        self._pending: list[bytes] = []
        self._notify: Callable[[], None] = lambda: None
        self._log_file = os.devnull
        #: What taking pydevd down left behind (``facts``), and when it was done.
        self.left: list[str] = []
        self.stopped_at: float | None = None
        self.stop_ms: float | None = None
        self.rearm_ms: float | None = None
        self._abandoned = False
        self._restart_failed = False

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
            self._notify, self._log_file = notify, str(log_file)
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
            self.tracing = "on"
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
            if conn is not self.conn or self.tracing in ("stopping", "off", "starting"):
                self._closed_for_stop(conn)  # a pydevd that was taken down on purpose
            else:
                self._lost("pydevd closed its connection")
            return
        self._inbox += data
        try:
            for body in split_messages(self._inbox):
                obj = _body(body)
                self._note_threads(obj)
                if obj.get("type") == "response":
                    seq = obj.get("request_seq")
                    with self._send_lock:
                        own = seq in self._own_requests
                        self._own_requests.discard(seq)
                        done = seq is not None and seq == self._disconnect_seq
                        if done:
                            self._disconnect_seq = None
                    if done:
                        self._stop_when_detached()
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
        """One of VS Code's messages to pydevd; after the last detach, the first one sets
        pydevd up again (in the background: what arrives meanwhile waits in order)."""
        with self._send_lock:
            if self.state == "ready" and self.tracing not in ("on", "disconnecting"):
                if sum(map(len, self._pending)) + len(message) > MAX_DAP_MESSAGE:
                    raise OSError("VS Code sent too much while the debugger was starting")
                self._pending.append(message)
                if self.tracing == "off":
                    self._start_tracing()
                return
            if self.tracing == "disconnecting":  # VS Code is back before pydevd answered
                self.tracing, self._disconnect_seq = "on", None
            self._send(message)

    def _send(self, message: bytes) -> None:
        """(``_send_lock`` held.)"""
        conn = self.conn
        if conn is None:
            raise OSError("pydevd is not connected")
        try:
            conn.sendall(message)
        except OSError as exc:
            # Part of a message may be in pydevd's stream now: nothing after it could be
            # read right, so this debugger is done (said, never left half-working).
            self._lost(f"pydevd stopped reading ({exc}); restart the service to debug it "
                       f"again")
            raise

    def release(self, owner: str | None = None) -> None:
        """Detach the debugger: breakpoints off, every stopped thread resumes; once pydevd
        has answered, its tracing is taken down (``_stop_when_detached``). With ``owner``,
        only if that session still owns the debugger."""
        if owner is not None and owner != self.owner:
            return
        with self._send_lock:
            if self.tracing == "starting":  # VS Code left while pydevd was starting for it
                self._pending.clear()
                self._abandoned = True
                return
            if self.tracing in ("stopping", "off"):
                self._pending.clear()
                return
            if self.conn is None:
                return
            self._own_seq += 1
            seq = self._own_seq
            self._own_requests.add(seq)
            if len(self._own_requests) > 64:  # answers that never came: do not grow for ever
                self._own_requests = set(sorted(self._own_requests)[-16:])
            self._disconnect_seq = seq
            self.tracing = "disconnecting"
            with contextlib.suppress(OSError):
                self._send(frame(json.dumps({
                    "seq": seq, "type": "request", "command": "disconnect",
                    "arguments": {"restart": False, "terminateDebuggee": False}}).encode()))

    def _stop_when_detached(self) -> None:
        """pydevd answered our disconnect (breakpoints gone, threads resumed) and VS Code
        has not come back since: take pydevd's tracing and threads down (``stop_pydevd``),
        in a thread of ours, so that the host runs as it did before the attach."""
        with self._send_lock:
            if self.tracing != "disconnecting":
                return
            self.tracing = "stopping"
            conn = self.conn
        untraced(threading.Thread(target=self._stop, args=(conn,), name="prodbug-debugpy",
                                  daemon=True)).start()

    def _stop(self, conn: socket.socket | None) -> None:
        started = time.perf_counter()
        try:
            if conn is not None:
                # pydevd's reader ends on this; its writer has nothing left to say.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
            self.left = stop_pydevd()
        except Exception as exc:  # the host goes on; the operator is told in facts
            _log.warning("taking debugpy's tracing down failed", exc_info=True)
            self.left = [f"taking debugpy down failed: {type(exc).__name__}: {exc}"]
        self.stop_ms = round((time.perf_counter() - started) * 1000, 1)
        self.stopped_at = time.time()
        with self._send_lock:
            self._inbox.clear()
            self._own_requests.clear()
            self.thread_ids.clear()
            self.tracing = "off"
            if self._pending:  # VS Code came back meanwhile
                self._start_tracing()
        self._notify()

    def _closed_for_stop(self, conn: socket.socket) -> None:
        with self._send_lock:
            if self.conn is conn:
                self.conn = None
        conn.close()

    def _start_tracing(self) -> None:
        """Set pydevd up again for the VS Code that is attaching (``_send_lock`` held)."""
        self.tracing, self._abandoned = "starting", False
        untraced(threading.Thread(target=self._restart, name="prodbug-debugpy",
                                  daemon=True)).start()

    def _restart(self) -> None:
        started = time.perf_counter()
        ours, theirs = socket.socketpair()
        old = self.conn
        try:
            with pydevd_environment(self._log_file):
                self._connect(theirs)
            ours.settimeout(5)
        except Exception as exc:
            # pydevd half set up would trace the host with nobody attached: take it down,
            # and give the agent a connection that ends at once, so that the session
            # ends saying why.
            _log.warning("debugpy did not start again", exc_info=True)
            with contextlib.suppress(Exception):
                stop_pydevd()
            theirs.close()
            with self._send_lock:
                self._pending.clear()
                self.tracing = "on"
                self.conn = ours
            self.error = f"debugpy did not start again: {type(exc).__name__}: {exc}"
            self._restart_failed = True
            self._notify()
            return
        with self._send_lock:
            self.conn = ours
            pending, self._pending = self._pending, []
            self.tracing = "on"
            with contextlib.suppress(OSError):  # (said by _send)
                for message in pending:
                    self._send(message)
        if old is not None and old is not ours:
            with contextlib.suppress(OSError):
                old.close()
        self.rearm_ms = round((time.perf_counter() - started) * 1000, 1)
        with self._send_lock:
            abandoned, self._abandoned = self._abandoned, False
        if abandoned:  # nobody is attached any more: take it down again
            self.release()
        self._notify()

    def _lost(self, why: str) -> None:
        self.state = "failed"
        if not self._restart_failed:
            self.error = why
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
                "debugpy_error": self.error, "debugpy_attach_ms": self.attach_ms,
                "debugpy_tracing": self.tracing if self.state == "ready" else "off",
                "debugpy_stopped_at": self.stopped_at, "debugpy_stop_ms": self.stop_ms,
                "debugpy_restart_ms": self.rearm_ms, "debugpy_left": list(self.left)}


def _debugpy_file() -> str:
    import debugpy

    return str(debugpy.__file__)


def _import_pydevd() -> Any:
    """Import debugpy's pydevd (inside ``pydevd_environment``), configured for prodbug."""
    import debugpy

    exe = os.path.basename(sys.executable or "")
    if not exe.startswith("python"):  # e.g. uwsgi: debugpy's helpers need a Python
        import shutil  # here: with bz2 and lzma behind it, not at the host's start

        python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}") \
            or shutil.which("python3")
        if python:
            debugpy.configure(python=python)
    debugpy.configure(subProcess=False)
    hook = sys.breakpointhook
    import debugpy.server.api  # puts pydevd on the path, speaking DAP
    import pydevd  # type: ignore[import-not-found]

    sys.breakpointhook = hook  # debugpy's would make the host's breakpoint() wait for VS Code
    return pydevd


def _foreign(ident: int) -> bool:
    """Whether thread ``ident`` is the host's (not prodbug's, not pydevd's own)."""
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return thread is None or not (is_own_thread(thread) or
                                  vars(thread).get("pydev_do_not_trace"))


def stop_pydevd() -> list[str]:
    """Undo what ``pydevd.settrace`` installed, as far as it can be undone; returns what is
    left (empty when nothing is). Called once pydevd has answered a ``disconnect``
    (breakpoints removed, threads resumed) and its connection is closing.

    What pydevd installs, and how it goes: the ``sys.settrace`` wrapper (restored);
    ``threading.settrace`` (cleared if it is still pydevd's); ``_thread.start_new_thread``
    and ``threading._start_new_thread`` wrappers that trace and announce every new thread
    (pydevd's own ``undo_patch_thread_modules``); its reader, writer, command and
    check-alive threads, which wake ~20 times a second between them (``dispose_and_kill_all_pydevd_
    threads``, which also forgets the global debugger). Before 3.12, a trace function in
    every thread that was running (``remove_trace_in_threads``: each thread drops it at
    its next event); on 3.12+, the ``sys.monitoring`` tool, its events and callbacks, and
    the local events of the code on every stack (``stop_monitoring``).
    """
    pydevd = sys.modules.get("pydevd")
    tracing = sys.modules.get("pydevd_tracing")
    if pydevd is None or tracing is None:
        return []
    from _pydev_bundle import pydev_monkey  # type: ignore[import-not-found]

    py_db = pydevd.get_global_debugger()
    tracing.restore_sys_set_trace_func()
    if sys.version_info >= (3, 12):
        _stop_monitoring()
    elif _pydevd_hook(threading.gettrace(), py_db):
        threading.settrace(None)  # type: ignore[arg-type,unused-ignore]
    pydev_monkey.undo_patch_thread_modules()
    if py_db is not None:
        py_db.dispose_and_kill_all_pydevd_threads(wait=True, timeout=2.0)
    failed: list[int] = []
    if sys.version_info < (3, 12):
        idents = [ident for ident in sys._current_frames() if _foreign(ident)]
        try:
            failed = remove_trace_in_threads(idents)
        except RuntimeError as exc:  # no native helper here: the threads stay traced
            _log.warning("prodbug: debugpy's trace functions stay in the threads: %s", exc)
            failed = idents
    return _left_behind(py_db, failed)


def forget_pydevd_after_fork() -> None:
    """In a forked child of a process VS Code was attached to: nobody is attached here,
    and pydevd's threads did not survive the fork, yet what it installed would go on in
    the child's threads (a breakpoint would stop one for good). Take that down without
    waiting on any thread or lock of the parent's: only the thread that forked runs here."""
    pydevd = sys.modules.get("pydevd")
    tracing = sys.modules.get("pydevd_tracing")
    if pydevd is None or tracing is None:
        return
    from _pydev_bundle import pydev_monkey

    py_db = pydevd.get_global_debugger()
    tracing.restore_sys_set_trace_func()
    if sys.version_info >= (3, 12):
        _stop_monitoring()
    else:
        sys.settrace(None)  # the forking thread's: the only thread left
    if _pydevd_hook(threading.gettrace(), py_db):
        threading.settrace(None)  # type: ignore[arg-type,unused-ignore]
    pydev_monkey.undo_patch_thread_modules()
    if py_db is not None:
        py_db.pydb_disposed = True
        pydevd.set_global_debugger(None)


def _pydevd_hook(hook: Any, py_db: Any) -> bool:
    """Whether ``hook`` is pydevd's (a bound method of it, or before 3.12 the
    ``functools.partial(trace_dispatch, py_db)`` it gives ``threading.settrace``)."""
    if hook is None or py_db is None:
        return False
    if type(hook) is functools.partial:  # exact type: a host's hook runs no code of its own
        return any(arg is py_db for arg in hook.args)
    return getattr(hook, "__self__", None) is py_db


def _stop_monitoring() -> None:
    monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
    tool = monitoring.DEBUGGER_ID
    if monitoring.get_tool(tool) != "pydevd":
        return
    for top in sys._current_frames().values():  # events pydevd set on running code
        frame: FrameType | None = top
        while frame is not None:
            with contextlib.suppress(ValueError):
                monitoring.set_local_events(tool, frame.f_code, 0)
            frame = frame.f_back
    from _pydevd_sys_monitoring import pydevd_sys_monitoring  # type: ignore[import-not-found]

    pydevd_sys_monitoring.stop_monitoring(all_threads=True)


def _left_behind(py_db: Any, failed: list[int]) -> list[str]:
    left = []
    if failed:
        left.append(f"a trace function in {len(failed)} thread(s) that could not be reached")
    hook = threading.gettrace()
    if _pydevd_hook(hook, py_db):
        left.append("threading.settrace")
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None and monitoring.get_tool(monitoring.DEBUGGER_ID) == "pydevd":
        left.append("the sys.monitoring tool")
    import _thread

    if _thread.start_new_thread is not getattr(_thread, "_original_start_new_thread",
                                                _thread.start_new_thread):
        left.append("_thread.start_new_thread")
    names = [t.name for t in threading.enumerate()
             if t.name.startswith("pydevd.") and t.name != "pydevd.CheckAliveThread"]
    if names:
        left.append("pydevd threads: " + ", ".join(sorted(names)))
    return left


#: pydevd can be set up once per process, so its state is the process's, not an agent's.
DEBUGPY = Debugpy()


class DapChannel:
    """One VS Code connection, relayed as whole messages over the one pydevd connection."""

    def __init__(self) -> None:
        self.id = os.urandom(4).hex()
        self.inbox = bytearray()

    def take(self, data: bytes) -> list[bytes]:
        """Whole message bodies once ``data`` is added; ValueError if it is not DAP."""
        self.inbox += data
        if len(self.inbox) > MAX_DAP_MESSAGE + 256:
            raise ValueError("more than a DAP message's worth of bytes without an end")
        return list(split_messages(self.inbox))


class DapSession(Session):
    """One operator's ``prodbug vscode``: any number of channels over time, one at a time."""

    mode = "vscode"
    exclusive = True
    after_gone = "VS Code's connection closed, threads resume"

    def __init__(self, key_id: str, key_name: str, heartbeat: float) -> None:
        super().__init__(key_id, key_name, heartbeat=heartbeat)
        self.channels: dict[str, DapChannel] = {}
        self.announced_ready = False
        #: Told once, in the agent thread, when debugpy is up (or failed) for this session.
        self.on_ready: Callable[[], None] = lambda: None

    def on_end(self) -> None:
        """Stopped threads resume, whether the agent thread is free or stuck."""
        DEBUGPY.release(owner=self.id)

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.announced_ready and DEBUGPY.state in ("ready", "failed"):
            self.announced_ready = True
            self.on_ready()
            return [("dap_ready", DEBUGPY.facts())]
        return []

    def finish(self) -> None:
        for channel in list(self.channels.values()):
            self.channels.pop(channel.id, None)
            DEBUGPY.release()  # whatever VS Code managed to say: threads resume
        if DEBUGPY.owner == self.id:
            DEBUGPY.owner = None
