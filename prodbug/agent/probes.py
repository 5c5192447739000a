"""Snapshots and logpoints: ``probe.open`` (debugger role), sessions that look, never stop.

A probe is armed on FILE:LINE (the code objects ``hooks.find_code`` finds there) and lives
as a session: it ends when its hit budget is spent (snapshots), when it expires, when its
operator closes it or stops sending heartbeats; whatever the reason, ``on_end`` disarms it
at once. ``info`` lists the armed probes (``agent.sessions``).

How a line is caught:

* Python 3.12+: ``sys.monitoring`` LINE events, local to the armed code objects only,
  under one tool id that every probe of the process shares (taken from the ids CPython
  leaves unassigned when the first probe arms, freed when the last one ends). It reaches
  frames already running in every thread. The other lines of those code objects return
  ``DISABLE`` on their first event and cost nothing afterwards; code elsewhere is never
  instrumented.
* Python 3.10/3.11: a trace function, in threads started from now on
  (``threading.settrace``) and in running ones (``foreign_trace``, debugpy's native
  helper), that returns a line tracer for calls of the armed code objects only; frames of
  that code already running get the line tracer directly. Every thread pays one trace
  call per Python function call while a probe is armed (see docs/probes.md); each drops
  the hook at its next event once the last probe is gone.

On a hit, the rate limit (a GCRA token bucket: one clock read and one comparison) comes
first; only a hit it lets through touches the frame. Condition and logpoint expressions
are a small read-only language (probe_expr.py), never ``eval``: names, attributes from
an object's ``__dict__`` (or its class's, or a slot), subscripts of exact dicts, lists,
tuples and strings by a constant or a name, constants; conditions add comparisons of
plain values, ``and``/``or``/``not`` and ``is``. Nothing of the host's runs: values are
rendered by ``SafeRepr``, redacted unless the operator asked otherwise.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import math
import os
import sys
import threading
import time
import types
from collections import deque
from types import CodeType, FrameType
from typing import Any

from prodbug.agent import foreign_trace, introspect
from prodbug.agent.context import number_arg
from prodbug.agent.hooks import find_code
from prodbug.agent.probe_expr import (
    MAX_TEXT,
    Template,
    Unreadable,
    compile_expression,
    evaluate,
    parse_template,
    truth,
)
from prodbug.agent.session import Event, Session
from prodbug.errors import BadRequest, RequestError

__all__ = ["MAX_COUNT", "MAX_EXPIRE", "ProbeSession", "armed", "probe_open"]

_log = logging.getLogger("prodbug.agent")

DEFAULT_EXPIRE = 600.0
MAX_EXPIRE = 3600.0
DEFAULT_RATE = 50.0
MAX_RATE = 1000.0
MAX_COUNT = 100
#: Frames a snapshot keeps (innermost first) and how many of them get their locals.
MAX_DEPTH = 64
DEFAULT_LOCALS = 3
MAX_LOCALS = 5
_MAX_NAMES = 50  # locals per frame
#: Events waiting for the agent thread; beyond this, hits are counted as lost.
_QUEUE = 1000
_MAX_LINE = 4096
_MAX_EXPRESSIONS = 20
_MAX_DICT_SCAN = 10_000
_MAX_WARNINGS = 20
#: sys.monitoring tool ids that CPython leaves unassigned (0 debugger, 1 coverage,
#: 2 profiler, 5 optimizer); pdb's hooks try them the other way round.
_TOOL_IDS = (3, 4)
_PLAIN = frozenset({int, float, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({dict, list, tuple, str})
_MEMBER = types.MemberDescriptorType
_monotonic = time.monotonic


# -- arming: one mechanism for every probe of the process ------------------------------------

#: line number -> ((code object, probe), ...): what the line callbacks look up, without a
#: lock (changed under ``_lock``, one key at a time, each value a new tuple).
_BY_LINE: dict[int, tuple[tuple[CodeType, ProbeSession], ...]] = {}
_CODE_IDS: frozenset[int] = frozenset()
_lock = threading.RLock()
_probes: list[ProbeSession] = []
_backend: _Monitoring | _Settrace | None = None


def armed() -> list[dict[str, Any]]:
    """What is armed in this process now (for tests and ``info``)."""
    with _lock:
        return [probe.facts() for probe in _probes]


def _reindex() -> None:
    global _CODE_IDS
    by_line: dict[int, list[tuple[CodeType, ProbeSession]]] = {}
    for probe in _probes:
        for code in probe.codes:
            by_line.setdefault(probe.line, []).append((code, probe))
    # Changed in place, a key at a time (the line callbacks hold the dict itself).
    for line in [line for line in _BY_LINE if line not in by_line]:
        del _BY_LINE[line]
    for line, entries in by_line.items():
        _BY_LINE[line] = tuple(entries)
    _CODE_IDS = frozenset(id(code) for probe in _probes for code in probe.codes)


def _arm(probe: ProbeSession) -> str:
    """Arm ``probe``; returns which threads it reaches. Raises RequestError."""
    global _backend
    with _lock:
        if _backend is None:
            _backend = _Monitoring() if hasattr(sys, "monitoring") else _Settrace()
        before = {id(code) for p in _probes for code in p.codes}
        _probes.append(probe)
        _reindex()
        try:
            _backend.add([c for c in probe.codes if id(c) not in before],
                         [c for c in probe.codes if id(c) in before])
        except Exception:
            _disarm_locked(probe)
            raise
        return _backend.reach


def _disarm(probe: ProbeSession) -> None:
    with _lock:
        _disarm_locked(probe)


def _disarm_locked(probe: ProbeSession) -> None:
    global _backend
    if probe not in _probes:
        return
    _probes.remove(probe)
    _reindex()
    if _backend is None:
        return
    left = {id(code) for p in _probes for code in p.codes}
    try:
        _backend.remove([c for c in probe.codes if id(c) not in left])
    finally:
        if not _probes:
            backend, _backend = _backend, None
            backend.close()


def _dispatch(code: CodeType, line: int, frame: FrameType | None) -> bool:
    """Hand a line event to the probes armed there; False if none is."""
    entries = _BY_LINE.get(line)
    if entries is None:
        return False
    found = False
    for armed_code, probe in entries:
        if armed_code is code:
            found = True
            probe.hit(code, frame)
    return found


_wake: tuple[int, int] | None = None


def _wake_pipe() -> tuple[int, int]:
    """The probe clock's wake-up pipe: made once, never closed (a callback still running
    in some thread as a probe ends must never write into a descriptor number the host
    has reused meanwhile)."""
    global _wake
    if _wake is None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        _wake = (read, write)
    return _wake


class _Monitoring:
    """3.12+: LINE events local to the armed code objects, under a tool id of our own.

    A hit that the rate limit turns away also switches its line off (``DISABLE``): until
    the limit lets the next one through, the line runs at full speed. The "probe clock"
    thread (one per process, while probes are armed) switches parked lines back on when
    that time comes, so the callback runs about twice per line let through, whatever the
    hit rate."""

    mechanism = "sys.monitoring"
    reach = "every thread, including frames already running"

    def __init__(self) -> None:
        mon: Any = getattr(sys, "monitoring")  # noqa: B009 (3.12+ only; mypy targets 3.10)
        self.mon = mon
        self.tool: int | None = None
        for tool in _TOOL_IDS:
            try:
                mon.use_tool_id(tool, "prodbug-probes")
            except ValueError:
                continue
            self.tool = tool
            break
        if self.tool is None:
            taken = ", ".join(f"{t}: {mon.get_tool(t)}" for t in _TOOL_IDS)
            raise RequestError(f"every sys.monitoring tool id probes may use is taken "
                               f"({taken})", "busy")
        #: Code objects with a parked line, by id, and when a hit may be let through
        #: again: the clock switches them back on then.
        self.parked: dict[int, tuple[CodeType, float]] = {}
        self.wake_r, self.wake_w = _wake_pipe()
        disable = mon.DISABLE
        armed_at = _BY_LINE.get
        clock = _monotonic
        parked = self.parked
        wake_w = self.wake_w
        write = os.write

        def on_line(code: CodeType, line: int) -> Any:
            # On every hit of an armed line: a dict lookup, a clock read and a comparison
            # before anything else (_dispatch, inlined).
            try:
                entries = armed_at(line)
                if entries is None:
                    return disable  # another line of an armed function: never again
                found = limited = False
                due = 0.0
                for armed_code, probe in entries:
                    if armed_code is code:
                        now = clock()
                        if now < probe._allow_at:
                            probe.dropped += 1
                            limited = not found or limited
                            due = probe._allow_at if due == 0.0 else min(due, probe._allow_at)
                        else:
                            limited = False
                            probe._admit(now, code, None)
                        found = True
                if not found:
                    return disable
                if limited:  # every probe here is over its rate: park the line
                    if id(code) not in parked:
                        parked[id(code)] = (code, due)
                        with contextlib.suppress(OSError):  # full: the clock is awake
                            write(wake_w, b"p")
                    return disable
            except Exception:  # runs in the host's thread: nothing may escape
                _log.warning("prodbug probe callback failed", exc_info=True)
            return None

        mon.register_callback(self.tool, mon.events.LINE, on_line)
        from prodbug.agent.dap import untraced

        untraced(threading.Thread(target=self._clock, name="prodbug-probe-clock",
                                  daemon=True)).start()

    def _clock(self) -> None:
        """Switch parked lines back on once their probes' rate limits allow a hit."""
        import select

        try:
            while self.tool is not None:
                timeout = 1.0
                parked = list(self.parked.values())
                if parked:
                    timeout = max(0.001, min(due for _, due in parked) - _monotonic())
                ready, _, _ = select.select([self.wake_r], [], [], timeout)
                if ready:
                    os.read(self.wake_r, 4096)
                    continue  # something was parked: look at the times again
                now = _monotonic()
                with _lock:
                    ripe = [code for code, due in list(self.parked.values()) if due <= now]
                    for code in ripe:
                        del self.parked[id(code)]
                    if self.tool is not None:
                        self.add([], [c for c in ripe if id(c) in _CODE_IDS])
        except Exception:  # a thread of ours: log, never raise into the host
            _log.warning("prodbug probe clock failed", exc_info=True)

    def add(self, new: list[CodeType], again: list[CodeType]) -> None:
        line = self.mon.events.LINE
        for code in new:
            self.mon.set_local_events(self.tool, code, line)
        for code in again:  # lines of it may have been DISABLEd: clearing re-enables them
            self.mon.set_local_events(self.tool, code, 0)
            self.mon.set_local_events(self.tool, code, line)

    def remove(self, codes: list[CodeType]) -> None:
        for code in codes:
            self.mon.set_local_events(self.tool, code, 0)

    def close(self) -> None:
        tool, self.tool = self.tool, None
        if tool is not None:
            self.mon.register_callback(tool, self.mon.events.LINE, None)
            self.mon.free_tool_id(tool)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")  # the clock sees tool None and ends


def _thread_object(ident: int) -> Any:
    active = getattr(threading, "_active", None)
    return dict.get(active, ident) if type(active) is dict else None


def _own_thread(ident: int) -> bool:
    """prodbug's or the debugger's thread (``dap.untraced``), read without host code."""
    attrs = introspect.instance_dict(_thread_object(ident))
    return attrs is not None and bool(dict.get(attrs, "prodbug_own") or
                                      dict.get(attrs, "is_pydev_daemon_thread"))


class _Settrace:
    """3.10/3.11: a trace function that only looks at calls of the armed code objects."""

    mechanism = "settrace"

    def __init__(self) -> None:
        if threading.gettrace() is not None:
            raise RequestError("another tool traces new threads (threading.settrace: a "
                               "debugger, a coverage tracer); probes will not replace it",
                               "busy")
        self.active = True
        self.reached: list[int] = []
        threading.settrace(self._global)
        usable, why = foreign_trace.available()
        if not usable:
            self.reach = (f"threads started from now on only (running threads cannot be "
                          f"reached here: {why})")
            return
        me = threading.get_ident()
        frames = sys._current_frames()
        targets = [ident for ident, frame in frames.items()
                   if ident != me and not _own_thread(ident) and not self._foreign(frame)]
        del frames
        failed = set(foreign_trace.set_trace_in_threads(self._global, targets))
        self.reached = [ident for ident in targets if ident not in failed]
        self.reach = "every thread, running or new (a trace call per Python call meanwhile)"

    def _foreign(self, frame: FrameType | None) -> bool:
        """Whether another tool traces this stack (pdb, a debugger): never taken over."""
        while frame is not None:
            trace = frame.f_trace
            if trace is not None and not (type(trace) is types.MethodType
                                          and type(trace.__self__) is _Settrace):
                return True
            frame = frame.f_back
        return False

    def add(self, new: list[CodeType], again: list[CodeType]) -> None:
        ids = {id(code) for code in new}
        if not ids or not self.reached:
            return
        frames = sys._current_frames()
        walk: FrameType | None = None
        try:
            for ident in self.reached:
                walk = frames.get(ident)
                while walk is not None:  # frames already running the code get line events
                    if id(walk.f_code) in ids:
                        walk.f_trace_lines = True
                        walk.f_trace = self._local
                    walk = walk.f_back
        finally:
            del frames, walk

    def remove(self, codes: list[CodeType]) -> None:
        """Frames of ``codes`` drop the line tracer at their next line (``_local``)."""

    def close(self) -> None:
        self.active = False
        current = threading.gettrace()
        if type(current) is types.MethodType and current.__self__ is self:
            threading.settrace(None)  # type: ignore[arg-type,unused-ignore]

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            if not self.active:
                sys.settrace(None)  # over: this thread drops the hook
                return None
            if event == "call" and id(frame.f_code) in _CODE_IDS:
                if _own_thread(threading.get_ident()):
                    sys.settrace(None)
                    return None
                return self._local
        except Exception:  # a trace function's error would reach the host's code
            _log.warning("prodbug probe tracer failed; removed", exc_info=True)
            sys.settrace(None)
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            if not self.active or id(frame.f_code) not in _CODE_IDS:
                # Its probe ended: this frame runs untraced from here (returning None
                # would leave it set), and the thread drops the hook if it is this one's:
                # a newer probe's may have replaced it meanwhile.
                frame.f_trace = None
                current = sys.gettrace()
                if not self.active and type(current) is types.MethodType and \
                        current.__self__ is self:
                    sys.settrace(None)
                return None
            if event == "line":
                _dispatch(frame.f_code, frame.f_lineno, frame)
            return self._local
        except Exception:
            _log.warning("prodbug probe tracer failed; removed", exc_info=True)
            return None


# -- the session ------------------------------------------------------------------------------

class ProbeSession(Session):
    """A snapshot (``count`` captures, then done) or a logpoint (a line per hit, until it
    expires), rate-limited to ``rate`` frame looks per second."""

    mode = "probe"
    exclusive = False
    after_gone = "the probe is disarmed"

    def __init__(self, key_id: str, key_name: str, *, heartbeat: float, kind: str,
                 filename: str, line: int, codes: list[CodeType], expire: float, rate: float,
                 count: int, condition: ast.expr | None, template: Template | None,
                 locals_depth: int, redact: bool) -> None:
        super().__init__(key_id, key_name, heartbeat=heartbeat)
        self.mode = kind
        self.kind = kind
        self.filename = filename
        self.line = line
        self.codes = codes
        self.expire = expire
        self.start_clock()
        self.rate = rate
        self.count = count
        self.condition = condition
        self.template = template or []
        self.locals_depth = locals_depth
        self.redact = redact
        self.mechanism = ""
        self.reach = ""
        self.hits = 0  # hits let through by the rate limit
        self.dropped = 0  # hits the rate limit turned away (frame untouched)
        self.emitted = 0  # snapshots taken, lines sent
        self.lost = 0  # results that found the queue full
        self.errors = 0
        self._claimed = 0
        self._events: deque[Event] = deque()
        self._warnings = 0
        self._busy: set[int] = set()
        self._gate = threading.RLock()  # a signal handler may hit the line too
        burst = max(1, math.ceil(rate / 10))
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = 0.0
        self._allow_at = -math.inf
        self._summary_sent = False

    def start_clock(self) -> None:
        """Count the expiry from now (once armed: arming may take seconds on 3.10/3.11)."""
        self.expires_at = time.time() + self.expire
        self._deadline = _monotonic() + self.expire

    # -- in the host's threads ---------------------------------------------------------

    def hit(self, code: CodeType, frame: FrameType | None) -> None:
        """A thread reached the line: the rate limit first, the frame only if it lets the
        hit through."""
        now = _monotonic()
        if now < self._allow_at:
            self.dropped += 1
            return
        self._admit(now, code, frame)

    def _admit(self, now: float, code: CodeType, frame: FrameType | None) -> None:
        with self._gate:  # GCRA: at most ``burst`` at once, ``rate`` per second after
            if now < self._allow_at or self.ended.is_set():
                self.dropped += 1
                return
            self._tat = max(self._tat, now) + self._interval
            self._allow_at = self._tat - self._tolerance
        ident = threading.get_ident()
        if ident in self._busy or _own_thread(ident):
            return  # prodbug's own threads, or this probe's work reaching its own line
        self._busy.add(ident)
        try:
            if frame is None:  # sys.monitoring: _admit <- the callback <- the host's frame
                frame = sys._getframe(2)
            if frame.f_code is not code:
                return
            self.hits += 1
            if self.kind == "snapshot":
                self._snapshot(frame, ident)
            else:
                self._logline(frame, ident)
        except Exception:
            self.errors += 1
            _log.warning("prodbug probe failed on a hit; the thread goes on", exc_info=True)
        finally:
            frame = None
            self._busy.discard(ident)

    def _push(self, event: Event) -> None:
        if len(self._events) >= _QUEUE:
            self.lost += 1
            return
        self._events.append(event)
        self._notify()

    def _warn(self, text: str) -> None:
        if self._warnings < _MAX_WARNINGS:
            self._warnings += 1
            last = self._warnings == _MAX_WARNINGS
            self._push(("warning", {"text": text + ("; further warnings are not sent"
                                                    if last else "")}))

    def _snapshot(self, frame: FrameType, ident: int) -> None:
        if self.condition is not None:
            try:
                if not truth(evaluate(self.condition, frame)):
                    return
            except Unreadable as exc:
                self._warn(f"--condition could not be read: {exc}; no snapshot taken")
                return
        with self._gate:
            if self._claimed >= self.count:
                return
            self._claimed += 1
            number = self._claimed
        from prodbug.agent.saferepr import SafeRepr
        from prodbug.agent.stacks import frame_dict

        fmt = SafeRepr(redact=self.redact)
        frames: list[dict[str, Any]] = []
        walk: FrameType | None = frame
        while walk is not None and len(frames) < MAX_DEPTH:
            shown = frame_dict(walk)
            if len(frames) < self.locals_depth and not fmt.exhausted:
                names = introspect.frame_locals(walk, _MAX_NAMES)
                if names is not None:
                    shown["locals"] = {fmt.name(n): fmt.value(n, v) for n, v in names}
            frames.append(shown)
            walk = walk.f_back
        truncated = walk is not None
        del walk
        self.emitted += 1
        self._push(("snapshot", {
            "number": number, "count": self.count, "at": time.time(),
            "thread": _thread_facts(ident), "frames": frames, "truncated": truncated,
            "locals_redacted": self.redact, "locals_truncated": fmt.exhausted}))
        if number >= self.count:
            self.end(f"done: {self.count} snapshot{'s' if self.count > 1 else ''} taken; "
                     f"disarmed")

    def _logline(self, frame: FrameType, ident: int) -> None:
        from prodbug.agent.saferepr import Limits, SafeRepr

        fmt = SafeRepr(limits=Limits(chars=200, items=10, depth=2, total=_MAX_LINE),
                       redact=self.redact)
        parts = []
        for piece in self.template:
            if isinstance(piece, str):
                parts.append(piece)
                continue
            source, node, label = piece
            try:
                parts.append(fmt.value(label, evaluate(node, frame)))
            except Unreadable as exc:
                self.errors += 1
                parts.append(f"<{source}: {exc}>")
        text = "".join(parts)
        if len(text) > _MAX_LINE:
            text = text[:_MAX_LINE - 3] + "..."
        self.emitted += 1
        self._push(("line", {"text": text, "at": time.time(), "thread": _thread_facts(ident),
                             "hit": self.hits}))

    # -- the session's life --------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        super().check_timeouts(now)
        if not self.ended.is_set() and _monotonic() >= self._deadline:
            what = (f"{self.emitted} of {self.count} snapshots taken" if self.kind == "snapshot"
                    else f"{self.emitted} lines sent")
            self.end(f"expired after {self.expire:g}s ({what}); disarmed")

    def on_end(self) -> None:
        try:
            _disarm(self)
        except Exception:
            _log.warning("prodbug could not disarm a probe", exc_info=True)

    def take_events(self) -> list[Event]:
        out: list[Event] = []
        while self._events:
            out.append(self._events.popleft())
        if self.ended.is_set() and not self._summary_sent:
            self._summary_sent = True
            out.append(("probe_end", self.counts()))
        return out

    def counts(self) -> dict[str, Any]:
        return {"hits": self.hits, "dropped": self.dropped, "emitted": self.emitted,
                "lost": self.lost, "errors": self.errors}

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "kind": self.kind, "file": self.filename,
                "line": self.line, "where": f"{self.filename}:{self.line}",
                "expires_at": self.expires_at, "rate": self.rate,
                **({"count": self.count} if self.kind == "snapshot" else {}),
                "mechanism": self.mechanism, **self.counts()}


def _thread_facts(ident: int) -> dict[str, Any]:
    attrs = introspect.instance_dict(_thread_object(ident)) or {}
    return {"ident": ident, "name": introspect.exact_str(dict.get(attrs, "_name"))}


# -- the handler ------------------------------------------------------------------------------

def _text(args: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if type(value) is not str or not value or len(value) > MAX_TEXT:
        raise BadRequest(f"{name} must be a non-empty string (at most {MAX_TEXT} chars)")
    return value


def probe_open(desk: Any, ctx: Any) -> dict[str, Any]:
    """Arm a snapshot or a logpoint on FILE:LINE, as a session of the requesting key."""
    args = ctx.args
    kind = args.get("kind")
    if kind not in ("snapshot", "logpoint"):
        raise BadRequest('kind must be "snapshot" or "logpoint"')
    filename = _text(args, "file") or ""
    line = args.get("line")
    if type(line) is not int or line < 1:
        raise BadRequest("line must be a positive integer")
    expire = number_arg(args, "expire", DEFAULT_EXPIRE, 0.1, MAX_EXPIRE)
    rate = number_arg(args, "rate", DEFAULT_RATE, 0.1, MAX_RATE)
    count = args.get("count", 1)
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        raise BadRequest(f"count must be an integer from 1 to {MAX_COUNT}")
    locals_depth = args.get("locals", DEFAULT_LOCALS)
    if type(locals_depth) is not int or not 0 <= locals_depth <= MAX_LOCALS:
        raise BadRequest(f"locals must be an integer from 0 to {MAX_LOCALS}")
    redact = args.get("redact", True)
    if type(redact) is not bool:
        raise BadRequest("redact must be true or false")
    condition = template = None
    if kind == "snapshot":
        text = _text(args, "condition", required=False)
        condition = compile_expression(text, condition=True) if text else None
    else:
        if args.get("condition") is not None:
            raise BadRequest("a logpoint takes no condition (its template is what it shows)")
        template = parse_template(_text(args, "template") or "")
    try:
        codes = find_code(filename, line)
    except LookupError as exc:
        raise RequestError(str(exc), "not_found") from None
    desk.check_free(exclusive=False)
    session = ProbeSession(
        ctx.key.id, ctx.key.name, heartbeat=desk.config.session_heartbeat, kind=kind,
        filename=filename, line=line, codes=codes, expire=expire, rate=rate, count=count,
        condition=condition, template=template, locals_depth=locals_depth, redact=redact)
    desk.open(session, ctx)
    try:
        session.reach = _arm(session)
        session.mechanism = _backend.mechanism if _backend is not None else ""
        session.start_clock()
    except RequestError as exc:
        session.end(f"not armed: {exc}")
        raise
    except Exception as exc:
        _log.warning("prodbug could not arm a probe", exc_info=True)
        session.end(f"not armed: {exc}")
        raise RequestError(f"the probe could not be armed: {exc}", "unsupported") from None
    functions = sorted({getattr(code, "co_qualname", code.co_name) for code in codes})
    return {**session.facts(), "heartbeat": desk.config.session_heartbeat,
            "python": sys.version.split()[0], "reach": session.reach,
            "functions": functions}
