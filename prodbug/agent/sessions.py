"""pdb sessions inside the agent: one per process, relayed over the guarded channel.

pdb runs in the thread being debugged (``--thread``, ``--break``) or in a session thread
of its own (``--inspect``, ``--post-mortem``), with a stdin/stdout of our own: output is
queued for the agent thread, which owns the sockets and sends it to the operator; input
lines arrive from the agent thread through a queue. No socket, port or file is opened,
and the host's ``sys.stdout``/``sys.stderr`` are never touched.

A session never outlives its operator. The CLI pings every second; after
``heartbeat`` seconds of silence (CLI killed, network gone), after ``idle`` seconds
without input, or on ``q``/``quit``/``c``/Ctrl-D, the session ends by *continuing*:
breakpoints cleared, tracing off, hooks removed. ``BdbQuit`` is never raised into the
host's thread.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from prodbug.agent import introspect, postmortem
from prodbug.agent.dap import is_own_thread, untraced
from prodbug.agent.session import Event, Session
from prodbug.errors import BadRequest, RequestError

if TYPE_CHECKING:  # pdb (bdb, cmd, code ...) and hooks load with the first session
    import pdb

    from prodbug.agent.hooks import Hook

__all__ = ["DETACH", "PdbSession", "SessionError", "open_session"]

_log = logging.getLogger("prodbug.agent")
DETACH = "\x00prodbug-detach"
_MAX_OUTPUT = 4 << 20  # queued for a slow operator; more is dropped with a note
_DETACHING = ("q", "quit", "exit", "EOF", "c", "cont", "continue")
_STEPPING = ("step", "s", "next", "n", "until", "unt", "return", "r", "jump", "j")
_REFUSED = {
    "interact": "'interact' would read the service's own stdin; use '!' statements instead",
    "debug": "a nested debugger is not available over prodbug",
    "run": "restarting the program is not possible in a live service",
    "restart": "restarting the program is not possible in a live service",
}


class SessionError(RequestError):
    """A session cannot be opened or used; ``code`` is the protocol error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code)


class _IO:
    """pdb's stdin and stdout."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, session: PdbSession) -> None:
        self._session = session

    def write(self, text: str) -> int:
        self._session.output(text)
        return len(text)

    def flush(self) -> None:
        pass

    def readline(self) -> str:
        return self._session.read_line()

    def isatty(self) -> bool:
        return False


#: pdb (with bdb, cmd, code ...: none of which a host needs otherwise) is imported with the
#: first session, not with the agent: ``_pdb_type`` defines the class then.
_pdb_class: Callable[..., pdb.Pdb] | None = None


def _new_pdb(session: PdbSession, *, stepping: bool) -> pdb.Pdb:
    """A pdb for ``session``: detaches (continues) instead of quitting, refuses what
    cannot work."""
    return _pdb_type()(session, stepping=stepping)


def _pdb_type() -> Callable[..., pdb.Pdb]:
    # Called by open_session, in the agent thread: a thread that hits a breakpoint later
    # finds the class made and imports nothing.
    global _pdb_class
    if _pdb_class is None:
        import pdb

        class _AgentPdb(pdb.Pdb):
            def __init__(self, session: PdbSession, *, stepping: bool) -> None:
                io = _IO(session)
                super().__init__(stdin=io, stdout=io,  # type: ignore[arg-type]
                                 nosigint=True, readrc=False)
                self.use_rawinput = False
                self.prompt = "(Pdb) "
                self.session = session
                self.stepping = stepping
                session.prompt = self.prompt

            def onecmd(self, line: str) -> bool:
                word = line.strip().split(" ", 1)[0] if line.strip() else ""
                if line == DETACH or word in _DETACHING:
                    self._detach()
                    return True
                if word in _REFUSED:
                    self.error(_REFUSED[word])
                    return False
                if word in _STEPPING and not self.stepping:
                    self.error("this session only looks (the thread keeps running): no "
                               "stepping; 'q' ends it")
                    return False
                return bool(super().onecmd(line))

            def _detach(self) -> None:
                self.clear_all_breaks()
                if self.stepping:
                    self.set_continue()  # no breakpoints: settrace(None), f_trace cleared
                self.session.end("detached: the thread goes on")

        from prodbug.agent import hooks

        hooks.OWN_TRACERS.append(_AgentPdb)
        _pdb_class = _AgentPdb
    return _pdb_class


class PdbSession(Session):
    """One operator's pdb session in this process."""

    exclusive = True
    after_gone = "the thread goes on"

    def __init__(self, key_id: str, key_name: str, mode: str, *,
                 notify: Callable[[], None], heartbeat: float, idle: float) -> None:
        super().__init__(key_id, key_name, heartbeat=heartbeat, notify=notify)
        self.mode = mode
        self.idle = idle
        self.state = "waiting"
        self.prompt = "(Pdb) "
        self.hook: Hook | None = None
        self.stopped_thread: str | None = None
        self._inbox: queue.Queue[str] = queue.Queue()
        self._out: list[str] = []
        self._out_size = 0
        self._prompt_pending = False
        self._lock = threading.Lock()
        self.last_input = self.last_seen

    # -- the debugged (or session) thread's side ----------------------------------------------

    def output(self, text: str) -> None:
        with self._lock:
            if self._out_size > _MAX_OUTPUT:
                return
            self._out.append(text)
            self._out_size += len(text)
            if self._out_size > _MAX_OUTPUT:
                self._out.append("\n*** output cut: the operator is not reading ***\n")
        self._notify()

    def read_line(self) -> str:
        with self._lock:
            self._prompt_pending = True
        self._notify()
        while not self.ended.is_set():
            try:
                line = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            self.last_input = time.monotonic()
            return line if line.endswith("\n") else line + "\n"
        return DETACH

    # -- the agent thread's side ---------------------------------------------------------------

    def take_output(self) -> tuple[str, str | None]:
        """Queued output and, if pdb waits for a line, its prompt (cut from the output)."""
        with self._lock:
            text = "".join(self._out)
            self._out.clear()
            self._out_size = 0
            prompt = None
            if self._prompt_pending:
                self._prompt_pending = False
                prompt = self.prompt
                if text.endswith(prompt):
                    text = text[: -len(prompt)]
            elif text.endswith(self.prompt):
                # pdb has written its prompt but not yet asked for the line: hold the prompt
                # back, so that the operator's terminal shows it only when a line is read.
                text = text[: -len(self.prompt)]
                self._out.append(self.prompt)
                self._out_size = len(self.prompt)
        return text, prompt

    def feed(self, line: str) -> None:
        self.last_seen = time.monotonic()
        self._inbox.put(line)

    def check_timeouts(self, now: float) -> None:
        super().check_timeouts(now)
        if not self.ended.is_set() and self.state == "stopped" \
                and now - self.last_input > self.idle:
            self.end(f"idle for {self.idle:g}s: the thread goes on")

    def on_end(self) -> None:
        """A stopped thread continues on its own; the hook is removed."""
        hook = self.hook
        if hook is not None:
            hook.remove()

    def take_events(self) -> list[Event]:
        text, prompt = self.take_output()
        if text or prompt is not None:
            return [("output", {"text": text, "prompt": prompt})]
        return []

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "thread": self.stopped_thread}

    # -- stopping ------------------------------------------------------------------------------

    def on_hit(self, frame: FrameType) -> Any:
        """In the thread that hit: run pdb there until the operator lets it go."""
        if self.ended.is_set():
            return None
        self.state = "stopped"
        self.stopped_thread = threading.current_thread().name
        self.last_input = time.monotonic()
        self.output(f"> stopped thread {self.stopped_thread!r} "
                    f"(ident {threading.get_ident()}); 'c', 'q' or Ctrl-D let it go on\n")
        debugger = _new_pdb(self, stepping=True)
        try:
            debugger.set_trace(frame)
            debugger.interaction(frame, None)
        except Exception:  # never let the debugger's failure reach the host's thread
            _log.warning("pdb session failed; the thread goes on", exc_info=True)
            debugger.clear_all_breaks()
            debugger.set_continue()
            self.end("the debugger failed (see the agent's log): the thread goes on")
            return None
        if self.ended.is_set():
            sys.settrace(None)
            return None
        return debugger.trace_dispatch

    def run_looking(self, frame: FrameType | None, tb: TracebackType | None) -> None:
        """``--inspect`` / ``--post-mortem``: pdb in a session thread; nothing stops."""
        self.state = "stopped"
        debugger = _new_pdb(self, stepping=False)
        try:
            debugger.reset()
            debugger.interaction(frame, tb)
        except Exception:
            _log.warning("pdb session failed", exc_info=True)
        finally:
            self.end("session closed")


def _thread_facts(thread: threading.Thread) -> tuple[str, int | None, int | None]:
    """Name, ident and native id from the Thread's own fields: a subclass's properties
    are host code, which the agent never runs."""
    name = introspect.exact_str(introspect.instance_attr(thread, "_name")) or "?"
    ident = introspect.exact_int(introspect.instance_attr(thread, "_ident"))
    native = introspect.exact_int(introspect.instance_attr(thread, "_native_id"))
    return name, ident, native


def _find_thread(spec: str, agent_ident: int | None) -> threading.Thread:
    candidates = [t for t in threading.enumerate()
                  if _thread_facts(t)[1] != agent_ident and not is_own_thread(t)]
    for thread in threading.enumerate():
        name, ident, native = _thread_facts(thread)
        if spec in (name, str(ident), str(native)):
            if thread not in candidates:
                raise SessionError("that is one of prodbug's (or the debugger's) own "
                                   "threads, which never stop", "not_found")
            return thread
    names = ", ".join(sorted(repr(_thread_facts(t)[0]) for t in candidates))
    raise SessionError(f"no thread named or numbered {spec!r}; threads: {names}", "not_found")


def _arm_break(session: PdbSession, args: dict[str, Any]) -> None:
    filename, line = args.get("file"), args.get("line")
    if not isinstance(filename, str) or not isinstance(line, int):
        raise BadRequest("break needs file (string) and line (integer)")
    condition = args.get("condition")
    if condition is not None:
        if not isinstance(condition, str):
            raise BadRequest("condition must be a string")
        try:
            compile(condition, "<condition>", "eval")
        except SyntaxError as exc:
            raise BadRequest(f"condition is not a Python expression: {exc.msg}") from None
    from prodbug.agent import hooks

    try:
        codes = hooks.find_code(filename, line)
    except LookupError as exc:
        raise SessionError(str(exc), "not_found") from None
    try:
        session.hook = hooks.arm_break(codes, line, condition, session.on_hit, session.output)
    except RuntimeError as exc:
        raise SessionError(str(exc), "busy") from None
    reach = session.hook.reach if session.hook is not None else None
    where = f" (Python {sys.version.split()[0]}: {reach})" if reach else ""
    session.output(f"breakpoint set at {filename}:{line}{where}; waiting for a thread "
                   f"to reach it\n")


def open_session(args: dict[str, Any], key_id: str, key_name: str, agent_ident: int | None, *,
                 notify: Callable[[], None], heartbeat: float, idle: float) -> PdbSession:
    """Start a session as ``args`` asks (``mode``: thread, break, inspect, post_mortem)."""
    from prodbug.agent import hooks  # with the first session, as pdb is (_pdb_type)

    _pdb_type()
    mode = args.get("mode")
    session = PdbSession(key_id, key_name, str(mode), notify=notify, heartbeat=heartbeat,
                         idle=idle)
    if mode == "thread":
        name, ident, _native = _thread_facts(_find_thread(str(args.get("thread", "")),
                                                          agent_ident))
        frame = sys._current_frames().get(ident or 0)
        if frame is None:
            raise SessionError(f"thread {name!r} has no Python frames", "not_found")
        try:
            session.hook = hooks.arm_thread(frame, ident or 0, session.on_hit)
        except NotImplementedError as exc:
            raise SessionError(str(exc), "unsupported") from None
        session.stopped_thread = name
        session.output(f"waiting for thread {name!r} to run its next line of Python\n")
    elif mode == "break":
        _arm_break(session, args)
    elif mode == "inspect":
        name, ident, _native = _thread_facts(_find_thread(str(args.get("thread", "")),
                                                          agent_ident))
        frame = sys._current_frames().get(ident or 0)
        session.stopped_thread = name
        session.output(f"looking at thread {name!r} without stopping it: values are "
                       f"live and may change between commands\n")
        _spawn(session, frame, None)
    elif mode == "post_mortem":
        captured = postmortem.last()
        if captured is None:
            raise SessionError("no unhandled exception since the agent started", "not_found")
        when = time.strftime("%H:%M:%S", time.localtime(captured.time))
        session.stopped_thread = captured.thread
        session.output(f"post-mortem of {type(captured.exc).__name__}: {captured.exc} "
                       f"(thread {captured.thread!r}, {when})\n")
        _spawn(session, None, captured.tb)
    else:
        raise BadRequest("mode must be thread, break, inspect or post_mortem")
    return session


def _spawn(session: PdbSession, frame: FrameType | None, tb: TracebackType | None) -> None:
    # No session id in the name: observers see thread names.
    untraced(threading.Thread(target=session.run_looking, args=(frame, tb), daemon=True,
                              name="prodbug-pdb")).start()
