"""The agent's sessions: opening them, relaying them, ending them (the one manager).

Every kind of session (``session.Session``: pdb, VS Code, and the kinds that look without
stopping) is opened through ``open``, pinged, closed and ended here, and pumped by
``pump``; each kind's own commands live beside the kind and reach the desk through
``open``/``own_session``/``send_event``. Everything here runs in the agent thread, which
owns the sockets; the debugged threads only reach a session through its queues and the
notify pipe (``wake``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prodbug import protocol
from prodbug.agent.audit import AuditLog
from prodbug.agent.context import Handler, RequestContext
from prodbug.agent.dap import (
    DEBUGPY,
    DapChannel,
    DapSession,
    check_request,
    frame,
    slow_tracing,
    untraced,
)
from prodbug.agent.outbox import Outbox, Route
from prodbug.agent.session import Session
from prodbug.agent.sessions import PdbSession, SessionError, open_session
from prodbug.config import AgentConfig
from prodbug.errors import BadRequest, Forbidden

__all__ = ["MAX_SESSIONS", "SessionDesk"]

_S = TypeVar("_S", bound=Session)

#: Sessions open at once in one process (all kinds, all operators): each has a watchdog
#: thread and may have something armed in the host.
MAX_SESSIONS = 16


class SessionDesk:
    """The process's sessions: at most one that stops threads (pdb, VS Code) at a time,
    at most ``MAX_SESSIONS`` in all, and where each one's events go."""

    def __init__(self, config: AgentConfig, audit: AuditLog, *, pid: int,
                 agent_ident: Callable[[], int | None], on_debugpy_ready: Callable[[], None],
                 runtime_dir: Callable[[], Path]) -> None:
        self.config = config
        self.audit = audit
        self.pid = pid
        self.agent_ident = agent_ident
        self.on_debugpy_ready = on_debugpy_ready
        self.runtime_dir = runtime_dir
        self.sessions: dict[str, Session] = {}
        self.routes: dict[str, Route] = {}
        #: Called when a session opens or ends (the registry shows open sessions).
        self.on_sessions_changed: Callable[[], None] = lambda: None
        self.outbox = Outbox()
        self.notify_r, self.notify_w = os.pipe()
        os.set_blocking(self.notify_w, False)

    def handlers(self) -> dict[str, Handler]:
        return {
            "pdb.open": self.pdb_open,
            "session.input": self.session_input,
            "session.ping": self.session_ping,
            "session.close": self.session_close,
            "dap.open": self.dap_open,
            "dap.connect": self.dap_connect,
            "dap.send": self.dap_send,
            "dap.disconnect": self.dap_disconnect,
            # The kinds that look without stopping: each in its own module, imported on
            # first use (the agent stays light until then).
            "probe.open": self._lazy("prodbug.agent.probes", "probe_open"),
            "profile.open": self._lazy("prodbug.agent.profiler", "profile_open"),
            "memory": self._lazy("prodbug.agent.memory", "memory"),
            "memory.open": self._lazy("prodbug.agent.memory", "memory_open"),
        }

    def _lazy(self, module: str, name: str) -> Handler:
        """A handler ``module.name(desk, ctx)``, the module imported when first called."""
        def handler(ctx: RequestContext) -> dict[str, Any]:
            import importlib

            function = getattr(importlib.import_module(module), name)
            return dict(function(self, ctx))
        return handler

    def adapter_fds(self) -> set[int]:
        """pydevd's connection, read whenever it is up: pydevd queues events for it even
        with no VS Code attached, and must never be left writing into a full socket."""
        # Always read, even when the operator's link is behind: what pydevd has to say
        # would otherwise pile up in pydevd's own queue, without bound. The outbox's bound
        # ends a session whose operator cannot keep up, saying why.
        fd = DEBUGPY.fileno()
        return set() if fd is None else {fd}

    def drain_notify(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.notify_r, 4096)

    def end_all(self, reason: str) -> None:
        """End every session; the next ``pump`` tells their operators."""
        for session in list(self.sessions.values()):
            session.end(reason)

    def listed(self) -> list[dict[str, Any]]:
        """What is open (``info``, ``ps``): each session's facts."""
        return [session.facts() for session in self.sessions.values()]

    def close_fds(self) -> None:
        for fd in (self.notify_r, self.notify_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
            os.write(self.notify_w, b"s")

    def check_free(self, exclusive: bool = True) -> None:
        """Raise ``busy`` unless a session of this kind may open now."""
        live = [s for s in self.sessions.values() if not s.ended.is_set()]
        current = next((s for s in live if s.exclusive), None) if exclusive else None
        if current is not None:
            opened = time.strftime("%H:%M:%S", time.localtime(current.opened_at))
            raise SessionError(f"busy: {current.mode} session opened by {current.key_name} "
                               f"at {opened} (if its operator is gone it ends by itself "
                               f"within {self.config.session_heartbeat:g}s)", "busy")
        if len(self.sessions) >= MAX_SESSIONS:
            raise SessionError(f"busy: {MAX_SESSIONS} sessions are open in this process",
                               "busy")

    def pdb_open(self, ctx: RequestContext) -> dict[str, Any]:
        self.check_free()
        session = open_session(ctx.args, ctx.key.id, ctx.key.name, self.agent_ident(),
                               notify=self.wake, heartbeat=self.config.session_heartbeat,
                               idle=self.config.session_idle)
        self.open(session, ctx)
        return {**session.facts(), "heartbeat": self.config.session_heartbeat,
                "idle": self.config.session_idle, "python": sys.version.split()[0]}

    def dap_open(self, ctx: RequestContext) -> dict[str, Any]:
        self.check_free()
        if slow_tracing() and DEBUGPY.state != "ready" and ctx.args.get("confirm") is not True:
            raise SessionError(
                f"starting debugpy on Python {sys.version.split()[0]} makes this whole "
                f"process run several times slower while VS Code is attached (its tracing "
                f"is taken down after the last detach); confirm to go ahead",
                "confirm_needed")
        session = DapSession(ctx.key.id, ctx.key.name, self.config.session_heartbeat)
        session.on_ready = self.on_debugpy_ready
        DEBUGPY.owner = session.id
        self.open(session, ctx)
        DEBUGPY.ensure(self.wake, self.runtime_dir() / f"debugpy-{self.pid}.log")
        return {**session.facts(), **DEBUGPY.facts(), "remote_root": os.getcwd(),
                "python": sys.version.split()[0], "slow_tracing": slow_tracing(),
                "heartbeat": self.config.session_heartbeat}

    def open(self, session: Session, ctx: RequestContext) -> None:
        """Add ``session`` (its kind already checked ``check_free``): its events go back
        the way ``ctx`` came, and a watchdog ends it if its operator goes."""
        session._notify = self.wake
        self.sessions[session.id] = session
        if ctx.route is not None:
            self.routes[session.id] = ctx.route
        self.watch(session)
        self.on_sessions_changed()

    def watch(self, session: Session) -> None:
        """Expire ``session`` from a thread of its own as well as from the agent's loop: if
        the agent thread is ever stuck (a host lock, a C call), an operator who is gone
        still lets go of every stopped thread within the heartbeat."""
        untraced(threading.Thread(target=_watchdog, args=(session, self.wake),
                                  name="prodbug-watchdog", daemon=True)).start()

    def own_dap(self, ctx: RequestContext) -> DapSession:
        return self.own_session(ctx, DapSession)

    def dap_connect(self, ctx: RequestContext) -> dict[str, Any]:
        session = self.own_dap(ctx)
        if DEBUGPY.state != "ready":
            raise SessionError(f"debugpy is {DEBUGPY.state}"
                               + (f": {DEBUGPY.error}" if DEBUGPY.error else ""), "not_ready")
        for old in list(session.channels.values()):
            # One VS Code at a time, and only this key's: a new attach replaces a channel
            # whose VS Code went away before saying so (a port check, a cancelled attach).
            self.close_channel(session, old, "replaced by a new VS Code connection")
        channel = DapChannel()
        session.channels[channel.id] = channel
        return {"channel": channel.id}

    def dap_send(self, ctx: RequestContext) -> dict[str, Any]:
        session = self.own_dap(ctx)
        channel = session.channels.get(str(ctx.args.get("channel")))
        data = ctx.args.get("data")
        if channel is None:
            raise SessionError("no such channel (VS Code's connection closed)", "not_found")
        if not isinstance(data, str):
            raise BadRequest("data must be base64 text")
        try:
            for body in channel.take(base64.b64decode(data, validate=True)):
                checked, refusal = check_request(body, DEBUGPY.thread_ids)
                if checked is not None:
                    DEBUGPY.send(frame(checked))
                elif refusal is not None:  # answered here: pydevd would choke on it
                    self.send_event(session.id, protocol.Event(session.id, "dap", {
                        "channel": channel.id, "data": base64.b64encode(
                            frame(json.dumps(refusal).encode())).decode("ascii")}))
        except (ValueError, OSError) as exc:
            self.close_channel(session, channel, f"the VS Code stream failed: {exc}")
        return {}

    def dap_disconnect(self, ctx: RequestContext) -> dict[str, Any]:
        session = self.own_dap(ctx)
        channel = session.channels.get(str(ctx.args.get("channel")))
        if channel is not None:
            self.close_channel(session, channel, "VS Code disconnected", notify=False)
        return {}

    def close_channel(self, session: DapSession, channel: DapChannel, reason: str,
                      notify: bool = True) -> None:
        session.channels.pop(channel.id, None)
        DEBUGPY.release()  # whatever VS Code managed to say: threads resume
        if notify:
            self.send_event(session.id, protocol.Event(session.id, "dap_closed",
                                                        {"channel": channel.id,
                                                         "reason": reason}))

    def send(self, route: Route, frame: bytes) -> None:
        """Send in order, queueing what a slow link cannot take yet (see outbox.py)."""
        self.outbox.send(route, frame)

    def send_event(self, session_id: str, event: protocol.Event) -> None:
        route = self.routes.get(session_id)
        if route is not None:
            self.send(route, protocol.encode_event(event))

    def relay_adapter(self, fd: int) -> None:
        """pydevd's messages to the attached VS Code, if any; dropped otherwise (they
        describe a debugging session nobody is attached to)."""
        session = self.sessions.get(DEBUGPY.owner or "")
        channel = None
        if isinstance(session, DapSession) and not session.ended.is_set():
            channel = next(iter(session.channels.values()), None)
        for message in DEBUGPY.read():
            if channel is None or session is None:
                continue
            self.send_event(session.id, protocol.Event(
                session.id, "dap", {"channel": channel.id,
                                    "data": base64.b64encode(message).decode("ascii")}))
        if DEBUGPY.state == "failed" and isinstance(session, DapSession):
            session.end(f"the debugger stopped: {DEBUGPY.error}")

    def own_session(self, ctx: RequestContext, kind: type[_S]) -> _S:
        """The session the request names, which must be the requesting key's and of
        ``kind``; the operator is heard from (its heartbeat)."""
        session = self.sessions.get(str(ctx.args.get("session")))
        if session is None:
            raise SessionError("no such session (it may have ended)", "not_found")
        if session.key_id != ctx.key.id:  # the key itself, not a name a client may share
            raise Forbidden("that session belongs to another key", needed_role="debugger")
        if not isinstance(session, kind):
            raise SessionError(f"that is not a {kind.mode} session", "not_found")
        if ctx.route is not None:  # the operator may have reconnected
            self.routes[session.id] = ctx.route
        session.last_seen = time.monotonic()
        return session

    def session_input(self, ctx: RequestContext) -> dict[str, Any]:
        data = ctx.args.get("data")
        if not isinstance(data, str) or len(data) > 65536:
            raise BadRequest("data must be a line of text (at most 64 KiB)")
        self.own_session(ctx, PdbSession).feed(data)
        return {}

    def session_ping(self, ctx: RequestContext) -> dict[str, Any]:
        return {"state": self.own_session(ctx, Session).state}

    def session_close(self, ctx: RequestContext) -> dict[str, Any]:
        session = self.own_session(ctx, Session)
        session.end(f"closed by the operator: {session.after_gone}")
        return {}

    def pump(self) -> None:
        """Send queued session output and endings; end sessions whose operator is gone."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            self._pump(session, now)

    def _pump(self, session: Session, now: float) -> None:
        session.check_timeouts(now)
        route = self.routes.get(session.id)
        if route is not None and route in self.outbox.overflowed:
            self.outbox.forget(route)
            session.end(f"the operator's link is too slow ({self.outbox.limit >> 20} MiB "
                        f"waiting, or nothing taken for {self.outbox.stall:g}s): the session "
                        f"ends rather than lose any of its output")
        events = [protocol.Event(session.id, kind, data)
                  for kind, data in session.take_events()]
        if session.ended.is_set():
            session.finish()
            events.append(protocol.Event(session.id, "state",
                                         {"state": "ended", "reason": session.reason}))
            del self.sessions[session.id]
            self.routes.pop(session.id, None)
            self.audit.record("session", key=session.key_name, key_id=session.key_id,
                              pid=self.pid, mode=session.mode, outcome=session.reason)
            self.on_sessions_changed()
        if route is not None:
            for event in events:
                self.send(route, protocol.encode_event(event))


def _watchdog(session: Session, wake: Callable[[], None]) -> None:
    # Runs nothing of the host's and logs nothing (logging takes the host's locks).
    try:
        while not session.ended.wait(1.0):
            session.check_timeouts(time.monotonic())
        wake()
    except Exception:  # noqa: S110 (a daemon thread of ours: never raise into the host)
        pass
