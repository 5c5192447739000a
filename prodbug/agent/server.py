"""The agent: a daemon thread in the host that serves requests on ZeroMQ ROUTER sockets.

Two sockets, one loop:

* ``ipc://RUNTIME/PID.sock`` always; NULL mechanism, guarded by the 0700 runtime directory.
* ``tcp://...`` when configured; CURVE only, every handshake checked by the ZAP handler
  below against the allow-list (no extra authenticator thread).

While idle the thread is blocked in ``zmq_poll`` with no timeout: it wakes the GIL only
for a request, a handshake, or the stop pipe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

from prodbug import protocol, registry
from prodbug._version import __version__
from prodbug.agent import postmortem
from prodbug.agent.audit import AuditLog, mask_literals
from prodbug.agent.context import Handler, RequestContext, Route
from prodbug.agent.dap import DEBUGPY, forget_pydevd_after_fork, untraced
from prodbug.agent.desk import SessionDesk
from prodbug.agent.door import HANDSHAKE_IVL_MS, RECEIVE_HWM, DenialLimiter, Door
from prodbug.agent.faults import FaultDumps
from prodbug.agent.forkfds import release_inherited_port  # not imported in a fork handler
from prodbug.agent.members import DoorWatch, find_door, service_entries
from prodbug.agent.sessions import SessionError
from prodbug.config import AgentConfig, parse_listen
from prodbug.errors import ConfigError, ProdbugError, ProtocolError, RequestError
from prodbug.keys import AuthorizedKey, fingerprint

if TYPE_CHECKING:
    # Loaded when first needed, not with the agent: a host pays at start only for what
    # serving needs (tests/test_agent_weight.py keeps it so). stacks brings saferepr,
    # waits (ast), tasks and procfs (ctypes); info brings psutil; keyring only with TCP;
    # relay only in a service (nothing else has other processes to reach).
    from prodbug.agent.keyring import KeyRing
    from prodbug.agent.relay import Relay
    from prodbug.agent.stacks import StateHistory

__all__ = ["THREAD_NAME", "Agent"]

THREAD_NAME = "prodbug-agent"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_DOMAIN = b"prodbug"
#: Pending messages per peer: with MAXMSGSIZE this bounds what a peer can make us hold.
_RCVHWM = 16
#: How long a process whose port is taken waits for the service's door to show up in the
#: registry (processes started together) before it reports the port as taken.
_DOOR_WAIT = 2.0
_log = logging.getLogger("prodbug.agent")

#: Not worth a record each: a heartbeat a second, and DAP bytes in transit (a session's
#: opening and end are recorded; so is every line typed into pdb).
_UNAUDITED = frozenset({"session.ping", "dap.send"})


class Agent:
    """One process's agent. Use ``prodbug.start_agent()``, which keeps one per process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.started_at = time.time()
        self.ipc_endpoint: str | None = None
        self.tcp_endpoint: str | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1
        self._waited = True
        self._keyring: KeyRing | None = None
        self._server_cert: tuple[bytes, bytes] | None = None
        self._audit = AuditLog(config.audit_log)
        self._history: StateHistory | None = None
        self._faults: FaultDumps | None = None
        self._desk: SessionDesk | None = None
        self._registry_entry: dict[str, Any] = {}
        self._door: Door | None = None  # the TCP endpoint's guard (door.py)
        #: The service this process belongs to (see members.py), and its part in it:
        #: "door" (holds the TCP port), "member" (reached through the door) or "local".
        self.service = config.service_name()
        # A process of a service with no port settings of its own (an injected one) is a
        # member too: the door reaches it; it just cannot take the port over.
        self.role = "member" if self.service is not None else "local"
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._ipc: zmq.Socket[bytes] | None = None
        self._zap: zmq.Socket[bytes] | None = None
        self._tcp: zmq.Socket[bytes] | None = None
        self._sockets: list[zmq.Socket[bytes]] = []
        self._relay: Relay | None = None
        self._watch: DoorWatch | None = None  # a member's eye on the door's process
        self._door_endpoint: str | None = None  # the port a member would take over
        self._takeover_at: float | None = None
        self._takeover_tries = 0
        self._relay_checked = 0.0
        self._members_cache: list[dict[str, Any]] = []
        self._members_at = -1.0
        self._stopping = False
        #: Refused handshakes recorded: a budget per window, the rest counted (see facts).
        self._denials = DenialLimiter(budget=100, window=10.0)
        self._denied_unrecorded = 0
        self._handlers: dict[str, Handler] = {
            "ping": lambda ctx: {"pong": True, "pid": self.pid},
            "info": self._info,
            "stacks": self._stacks,
            "audit": lambda ctx: {"records": list(self._audit.recent)},
            "ps": self._ps,
        }

    def _info(self, ctx: RequestContext) -> dict[str, Any]:
        from prodbug.agent.info import collect_info

        return collect_info(self.facts())

    def _stacks(self, ctx: RequestContext) -> dict[str, Any]:
        from prodbug.agent.stacks import StateHistory, collect_stacks

        if self._history is None:
            self._history = StateHistory()
        # Without hang dumps there is no file to read (and each open gives the GIL away).
        faults = self._faults
        hang = faults.latest_hang() if faults is not None and faults.hang_seconds else None
        result = collect_stacks(ctx.args, self.ident, history=self._history,
                                may_unredact=protocol.role_allows(ctx.key.role, "audit"),
                                hang_dump=hang)
        return {**result, "role": self.role, "service": self.service}

    def _ps(self, ctx: RequestContext) -> dict[str, Any]:
        """The service's processes (or this one alone, when it is in no service)."""
        entries = list(service_entries(self._runtime_dir(), self.service))
        if not any(entry.get("pid") == self.pid for entry in entries):
            entries.append(self._entry())
        entries.sort(key=lambda e: (e.get("role") != "door", e.get("pid", 0)))
        return {"service": self.service, "agents": [registry.describe_entry(e) for e in entries]}

    def handler_names(self) -> set[str]:
        """Every command this agent serves (a test checks them against the protocol)."""
        return set(self._handlers)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the agent thread is serving."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._start_error is None

    @property
    def ident(self) -> int | None:
        """The agent thread's ``threading`` ident (left out of stack dumps)."""
        return self._thread.ident if self._thread is not None else None

    def facts(self) -> dict[str, Any]:
        """What the agent says about itself in ``info``."""
        faults = self._faults.facts() if self._faults is not None else {}
        faults.update(DEBUGPY.facts())
        return {
            "native_id": self._thread.native_id if self._thread is not None else None,
            "ipc_endpoint": self.ipc_endpoint,
            "tcp_endpoint": self.tcp_endpoint,
            "started_at": self.started_at,
            # How the TCP door has fared: refusals the audit budget left unrecorded, open
            # connections, and how often the door shut to protect the host.
            "denied_unrecorded": self._denied_unrecorded,
            "tcp_connections": self._door.connections if self._door is not None else None,
            "door_shut_count": self._door.shut_count if self._door is not None else None,
            "outbound_queued": self._desk.outbox.total if self._desk is not None else 0,
            "service": self.service,
            "role": self.role,
            "relayed_pending": self._relay.pending if self._relay is not None else 0,
            # Every open session, and what each has armed in the host.
            "sessions": self._desk.listed() if self._desk is not None else [],
            **faults,
        }

    def start(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Load keys, then start the thread; with ``wait``, raise its set-up error if any."""
        self.config.validate()
        registry.socket_path(self._runtime_dir(), self.pid)  # a too-long path fails here
        secret_key, authorized = self.config.server_secret_key, self.config.authorized_keys
        if self.config.listen is not None and secret_key and authorized:
            from prodbug.agent.keyring import KeyRing
            from prodbug.keys import load_secret_certificate

            cert = load_secret_certificate(secret_key)
            self._server_cert = (cert.public_key.encode(), (cert.secret_key or "").encode())
            self._keyring = KeyRing(authorized)
            if not self._keyring.keys:
                _log.warning("no authorized keys in %s: nobody can connect over TCP yet",
                             authorized)
        self._wake_r, self._wake_w = os.pipe()
        self._desk = SessionDesk(self.config, self._audit, pid=self.pid,
                                 agent_ident=lambda: self.ident,
                                 on_debugpy_ready=self._write_registry,
                                 runtime_dir=self._runtime_dir)
        self._handlers.update(self._desk.handlers())
        self._desk.on_sessions_changed = self._write_registry
        self._waited = wait
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        untraced(self._thread)
        self._thread.start()
        if not wait:
            return
        if not self._ready.wait(timeout):
            raise ConfigError(f"the agent did not start within {timeout:g}s")
        if self._start_error is not None:
            self._thread.join(timeout)
            raise self._start_error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the sockets and unregister; safe to call more than once."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("agent thread did not stop within %gs", timeout)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's agent without touching its zmq state."""
        desk, self._desk = self._desk, None
        if desk is not None:  # inherited hooks would stop a thread nobody can release
            desk.end_all("forked")
            desk.close_fds()
        if DEBUGPY.state in ("ready", "starting"):  # the adapter belongs to the parent
            DEBUGPY.state, DEBUGPY.error = "failed", "inherited through fork from the parent"
            try:  # its tracing and breakpoints too; the rest below must happen regardless
                forget_pydevd_after_fork()
            except Exception:
                _log.warning("could not take pydevd down in forked child %d", os.getpid(),
                             exc_info=True)
        if self._faults is not None:  # the parent's signal handlers write the parent's files
            self._faults.stop(after_fork=True)
            self._faults = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._thread = None
        if self.tcp_endpoint is not None:  # the parent's port must die with the parent
            release_inherited_port(self.tcp_endpoint)
        if self._watch is not None:  # the parent's eye on the door: not the child's
            self._watch.close()
            self._watch = None

    def _runtime_dir(self) -> Path:
        # The same directory for the life of the process: a private fallback when the
        # default one was taken by another user (registry.resolve_runtime_dir).
        return registry.resolve_runtime_dir(self.config.runtime_dir)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        runtime_dir = self._runtime_dir()
        try:
            self._ctx = zmq.Context(io_threads=1)
            self._ctx.setsockopt(zmq.LINGER, 0)
            self._bind(self._ctx, runtime_dir)
        except BaseException as exc:  # any set-up failure goes back to start(), never up
            self._start_error = _as_config_error(exc, self.config)
            if not self._waited:  # nobody will see the exception: say it here
                _log.warning("prodbug agent not started: %s", self._start_error)
            self._ready.set()
            self._close_all()
            if self._desk is not None:
                self._desk.close_fds()
            if self._faults is not None:
                self._faults.stop()
            if self.ipc_endpoint is not None:
                registry.remove_entry(runtime_dir, self.pid)
            return
        self._ready.set()
        _log.info("agent %s serving on %s%s", __version__,
                  ", ".join(e for e in (self.ipc_endpoint, self.tcp_endpoint) if e),
                  f" ({self.role} of service {self.service})" if self.service else "")
        try:
            self._loop()
        except BaseException:  # the host must never see the agent's failure
            _log.exception("agent loop failed; the agent stops, the host goes on")
        finally:
            self._stopping = True  # the entry is removed below, not rewritten
            if self._desk is not None:
                self._desk.end_all("the agent stopped: the thread goes on")
                self._desk.pump()
            postmortem.uninstall()
            registry.remove_entry(runtime_dir, self.pid)
            if self._faults is not None:
                self._faults.stop()
            self._close_all()
            if self._desk is not None:
                self._desk.close_fds()
            _log.info("agent stopped")

    def _close_all(self) -> None:
        if self._relay is not None:
            self._relay.close()
        if self._watch is not None:
            self._watch.close()
        _close(self._ctx, self._sockets, self._wake_r, self._wake_w)

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]], runtime_dir: Path) -> None:
        registry.ensure_runtime_dir(runtime_dir)
        path = registry.socket_path(runtime_dir, self.pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of an earlier process that had our pid
        self._ipc = ctx.socket(zmq.ROUTER)
        self._sockets.append(self._ipc)
        self._limit(self._ipc)
        self._ipc.bind(f"ipc://{path}")
        self.ipc_endpoint = f"ipc://{path}"
        if self._desk is not None and self.service is not None:
            from prodbug.agent.relay import Relay

            self._relay = Relay(ctx, self._desk.send)
        if self.config.listen is not None and self._server_cert is not None:
            door = find_door(runtime_dir, self.service, exclude=self.pid)
            if door is None:
                try:
                    self._open_tcp(self._listen_address())
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EADDRINUSE or self.service is None:
                        raise
                    door = self._await_door(runtime_dir)  # started together: give it a moment
                    if door is None:
                        raise
            if door is not None:
                self._become_member(door)
        self._faults = FaultDumps(runtime_dir, self.pid, self.config.hang_dump,
                                  self.config.dump_signal)
        self._faults.start()
        postmortem.install()
        self._registry_entry = {
            **self._faults.facts(),
            "pid": self.pid,
            "ppid": os.getppid(),
            "argv": sys.argv,
            "endpoint": self.ipc_endpoint,
            "started_at": self.started_at,
            "version": __version__,
            "service": self.service,
        }
        self._write_registry()

    def _listen_address(self) -> str:
        host, port, _ = parse_listen(self.config.listen or "")
        return f"tcp://{host}:{port or '*'}"

    def _open_tcp(self, address: str) -> None:
        """Bind the CURVE port (the door's); on failure nothing of it is left open."""
        ctx = self._ctx
        if ctx is None or self._server_cert is None:
            raise ConfigError("the agent has no TCP settings")
        made: list[zmq.Socket[bytes]] = []
        try:
            if self._zap is None:
                zap = ctx.socket(zmq.REP)
                made.append(zap)
                zap.bind(_ZAP_ENDPOINT)
            tcp = ctx.socket(zmq.ROUTER)
            made.append(tcp)
            self._limit(tcp)
            # Little in libzmq's pipe (counted in messages, each up to a relayed member's
            # reply): the outbox behind it is bounded in bytes (outbox.py).
            tcp.setsockopt(zmq.SNDHWM, 2)
            tcp.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full pipe says EAGAIN: outbox.py
            tcp.curve_server = True
            tcp.curve_publickey, tcp.curve_secretkey = self._server_cert
            tcp.zap_domain = _ZAP_DOMAIN
            tcp.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
            door = Door(tcp, address)
            made.append(door.monitor)
            endpoint = door.bind()
        except BaseException:
            for sock in made:
                with contextlib.suppress(Exception):
                    sock.close(linger=0)
            raise
        if self._zap is None:
            self._zap = made[0]
        self._tcp, self._door, self.tcp_endpoint = tcp, door, endpoint
        self._sockets.extend(sock for sock in made if sock not in self._sockets)
        self.role = "door" if self.service is not None else "local"
        self._door_endpoint = None

    def _await_door(self, runtime_dir: Path) -> dict[str, Any] | None:
        """The door of a service whose members started together: the one that bound first
        writes its entry a moment later. Waits _DOOR_WAIT while the service has other
        entries, a quarter of that while it has none (a port held by something else
        should not hold up the host's start for long)."""
        started = time.monotonic()
        while True:
            door = find_door(runtime_dir, self.service, exclude=self.pid)
            if door is not None:
                return door
            others = any(e.get("pid") != self.pid
                         for e in service_entries(runtime_dir, self.service))
            if time.monotonic() - started >= (_DOOR_WAIT if others else _DOOR_WAIT / 4):
                return None
            time.sleep(0.05)

    def _become_member(self, door: dict[str, Any]) -> None:
        if self._watch is not None:
            self._watch.close()
        self._watch = DoorWatch(int(door["pid"]))
        self._door_endpoint = str(door.get("tcp_endpoint") or "") or None
        self.role = "member"

    def _take_over(self) -> None:
        """The door has exited: hold the service's port, or follow whoever got it first."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._takeover_at = None
        runtime_dir = self._runtime_dir()
        old = self._door_endpoint
        try:
            self._open_tcp(old or self._listen_address())
        except zmq.ZMQError as exc:
            door = find_door(runtime_dir, self.service, exclude=self.pid)
            if door is not None:
                self._become_member(door)
                self._takeover_tries = 0
                self._write_registry()
                return
            self._door_endpoint = old
            self._takeover_tries += 1
            self._takeover_at = time.monotonic() + min(0.25 * 2 ** self._takeover_tries, 8.0)
            if self._takeover_tries == 3:  # once, and not for a race another member won
                _log.warning("cannot take over the port %s of service %s yet: %s; retrying",
                             old, self.service, exc)
            return
        self._takeover_tries = 0
        _log.info("took over %s for service %s: the door before exited", self.tcp_endpoint,
                  self.service)
        self._write_registry()

    def _entry(self) -> dict[str, Any]:
        sessions = len(self._desk.sessions) if self._desk is not None else 0
        return {**self._registry_entry, **DEBUGPY.facts(), "role": self.role,
                "tcp_endpoint": self.tcp_endpoint, "sessions": sessions}

    def _write_registry(self) -> None:
        if not self._registry_entry or self._stopping:
            return
        try:
            registry.write_entry(self._runtime_dir(), self._entry())
        except OSError as exc:  # the directory went away: ps shows less, nothing worse
            _log.debug("cannot update the registry entry: %s", exc)

    def _limit(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)  # x MAX_CONNECTIONS: bounded (door.py)
        sock.setsockopt(zmq.SNDHWM, _RCVHWM)

    def _sync_poller(self, poller: zmq.Poller, registered: set[Any]) -> set[Any]:
        """Poll exactly what is open now: sockets (the TCP ones come and go with the
        door), relay links, pydevd's connection, the door watch."""
        desk = self._desk
        wanted: set[Any] = {*self._sockets, self._wake_r}
        if desk is not None:
            wanted.add(desk.notify_r)
            wanted |= desk.adapter_fds()
        if self._relay is not None:
            wanted.update(self._relay.sockets())
        if self._watch is not None and self._watch.fd is not None:
            wanted.add(self._watch.fd)
        for item in registered - wanted:
            with contextlib.suppress(KeyError):
                poller.unregister(item)
        for item in wanted - registered:
            poller.register(item, zmq.POLLIN)
        return wanted

    def _loop(self) -> None:
        desk = self._desk
        if desk is None:
            return
        if self._ipc is not None:
            self._ipc.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full pipe says EAGAIN
        poller = zmq.Poller()
        registered: set[Any] = set()
        faults = self._faults
        while True:
            registered = self._sync_poller(poller, registered)
            try:
                events = dict(poller.poll(self._poll_timeout(desk)))
            except zmq.ZMQError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if faults is not None:
                faults.tick()
            if self._wake_r in events:
                return
            if self._door is not None:  # takes the monitor's events out of ``events``
                self._door.after_poll(events)
            self._watch_door(events)
            if desk.notify_r in events:
                desk.drain_notify()
            for fd in desk.adapter_fds() & events.keys():
                try:
                    desk.relay_adapter(fd)
                except Exception:
                    _log.exception("relaying debugpy's output failed; serving on")
            self._relay_ready(events)
            self._serve_ready(events)
            try:
                desk.pump()
                desk.outbox.flush()
            except zmq.ContextTerminated:
                raise
            except Exception:
                _log.exception("session upkeep failed; serving on")

    def _watch_door(self, events: dict[Any, int]) -> None:
        try:
            gone = self._watch is not None and self._watch.door_gone(events)
            due = self._takeover_at is not None and time.monotonic() >= self._takeover_at
            if gone or due:
                self._take_over()
        except zmq.ContextTerminated:
            raise
        except Exception:
            _log.exception("taking over the service's port failed; serving on")
            self._takeover_at = time.monotonic() + 8.0

    def _relay_ready(self, events: dict[Any, int]) -> None:
        relay = self._relay
        if relay is None:
            return
        try:
            for sock in relay.sockets():
                if sock in events:
                    relay.on_readable(sock)
            now = time.monotonic()
            if now - self._relay_checked >= 1.0:
                self._relay_checked = now
                relay.check()
        except zmq.ContextTerminated:
            raise
        except Exception:
            _log.exception("relaying for the service's processes failed; serving on")

    def _poll_timeout(self, desk: SessionDesk) -> int | None:
        """No timeout unless something needs a later look: idle means asleep."""
        timeout = self._faults.poll_timeout_ms if self._faults is not None else None
        if desk.sessions:  # heartbeats are checked every second
            timeout = min(timeout or 1000, 1000)
        if desk.outbox.pending:  # a slow operator's queue: retry soon
            retry = desk.outbox.retry_ms()
            timeout = min(timeout or retry, retry)
        if self._door is not None:  # while the TCP door is shut, wake to reopen it
            timeout = self._door.poll_timeout(timeout)
        if self._relay is not None:
            timeout = self._relay.poll_timeout(timeout)
        if self._watch is not None:
            timeout = self._watch.poll_timeout(timeout)
        if self._takeover_at is not None:
            wait = max(0, int((self._takeover_at - time.monotonic()) * 1000) + 1)
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _serve_ready(self, events: dict[Any, int]) -> None:
        for sock in (self._ipc, self._zap, self._tcp):
            if sock is None or sock not in events:
                continue
            try:
                if sock is self._zap:
                    self._handle_zap(sock)
                else:
                    self._serve(sock, local=sock is self._ipc)
            except zmq.ContextTerminated:
                raise
            except Exception:  # one bad message must not end the agent
                _log.exception("agent failed to handle a message; serving on")

    # -- ZAP: who may connect over TCP -------------------------------------------------------

    def _record_denial(self, **fields: Any) -> None:
        """Audit a refusal, within a budget: a flood of bad keys must not flood the log."""
        suppressed = self._denials.take_suppressed()
        if suppressed:
            self._audit.record("denied", key="-", suppressed=suppressed,
                               reason=f"{suppressed} more refusals not recorded (rate limit)")
        if self._denials.allow():
            self._audit.record("denied", **fields)
        else:
            self._denied_unrecorded += 1

    def _handle_zap(self, zap: zmq.Socket[bytes]) -> None:
        msg = zap.recv_multipart()
        request_id = msg[1] if len(msg) > 1 else b""
        code, text, user = b"400", b"malformed ZAP request", b""
        try:
            if len(msg) >= 6:
                address = msg[3].decode("ascii", "replace")
                mechanism = msg[5]
                credentials = msg[6:]
                if mechanism == b"CURVE" and len(credentials) == 1:
                    public = z85.encode(credentials[0]).decode("ascii")
                    key = self._keyring.lookup(public) if self._keyring else None
                    if key is not None:
                        code, text, user = b"200", b"OK", public.encode()
                    else:
                        text = b"key not authorized"
                        self._record_denial(key=fingerprint(public), address=address,
                                           reason="key not authorized")
                else:
                    text = b"CURVE required"
                    self._record_denial(key="-", address=address,
                                       reason=f"mechanism {mechanism!r}")
        finally:
            zap.send_multipart([b"1.0", request_id, code, text, user, b""])

    # -- requests ----------------------------------------------------------------------------

    def _serve(self, sock: zmq.Socket[bytes], *, local: bool) -> None:
        try:
            frames = sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        ident = frames[0].bytes
        key, public = self._identify(frames[-1], local)
        if key is None:
            if public is not None and self._desk is not None:
                # Authorized at its handshake, removed from the allow-list since: say so
                # (a silent drop reads as "the process may be frozen" on the other side).
                self._desk.send((sock, ident), protocol.encode_reply(protocol.error_reply(
                    "", "forbidden", "this key is no longer authorized by the agent (it was "
                    "removed from PRODBUG_AUTHORIZED_KEYS)")))
                self._record_denial(key=fingerprint(public), reason="key revoked")
            return
        started = time.perf_counter()
        route = (sock, ident)
        reply, cmd, key, extra = self._dispatch([f.bytes for f in frames[1:]], key, route,
                                                local=local)
        if reply is not None and self._desk is not None:
            self._desk.send(route, protocol.encode_reply(reply))
        if cmd in _UNAUDITED and (reply is None or reply.ok):
            return
        if reply is None:
            outcome = "relayed"
        else:
            outcome = "ok" if reply.ok else (reply.error.code if reply.error else "error")
        self._audit.record(
            "request",
            key=key.name,
            key_id=key.id,
            role=key.role,
            pid=self.pid,
            cmd=cmd,
            outcome=outcome,
            duration_ms=f"{(time.perf_counter() - started) * 1000:.2f}",
            **extra,
        )

    def _identify(self, frame: zmq.Frame,
                  local: bool) -> tuple[AuthorizedKey | None, str | None]:
        """The key a request came with (reloading a changed allow-list first: a removed
        key is refused on its open connection too), and its public key."""
        if local:
            uid = os.getuid()
            return AuthorizedKey(f"local:uid{uid}", f"local:uid{uid}", "debugger"), None
        try:
            public = frame.get("User-Id")
        except zmq.ZMQError:
            return None, None
        if self._keyring is None or not isinstance(public, str):
            return None, None
        return self._keyring.current(public, time.monotonic()), public

    def _dispatch(self, body: list[bytes], key: AuthorizedKey, route: Route, *,
                  local: bool) -> tuple[protocol.Reply | None, str, AuthorizedKey,
                                        dict[str, Any]]:
        """Serve one request: (its reply, or None when relayed to another process; the
        command; the key it ran as; extra audit fields)."""
        extra: dict[str, Any] = {}
        if len(body) != 1:
            return protocol.error_reply(
                "", "bad_request", f"a request is exactly one frame, got {len(body)}"), "-", \
                key, extra
        try:
            request = protocol.decode_request(body[0])
        except ProtocolError as exc:
            return protocol.error_reply(exc.request_id, exc.code, str(exc)), "-", key, extra
        cmd = request.cmd[:64]
        if request.via is not None:
            if not local:
                return protocol.error_reply(
                    request.id, "bad_request", '"via" is set only by the service\'s door, '
                    "over its local socket"), cmd, key, extra
            # Relayed by the door: the same uid (the ipc socket's directory is 0700), so it
            # may say whose request this is; the operator's key, never more than local.
            via = request.via
            role = via["role"]
            # This process's own allow-list still holds, for keys (a local operator, relayed
            # by the door, is this same uid: the ipc socket admits nobody else).
            if self._keyring is not None and not via["key"].startswith("local:uid"):
                own = self._keyring.current(via["key"], time.monotonic())
                if own is None:
                    return protocol.error_reply(
                        request.id, "forbidden", f'key "{via["name"]}" is not in the '
                        f"allow-list of process {self.pid}"), cmd, key, extra
                role = min(role, own.role, key=protocol.ROLES.index)
            key = AuthorizedKey(via["key"], via["name"], role)
            extra["via"] = via["door"]
        if cmd == "session.input" and isinstance(request.args.get("data"), str):
            # What the operator ran in pdb, with string literals masked: a password typed
            # into a pdb expression must not end up in a log file.
            extra["line"] = mask_literals(request.args["data"])[:200]
        if not protocol.role_allows(key.role, cmd) and cmd in protocol.COMMANDS:
            needed = protocol.COMMANDS[cmd]
            return protocol.error_reply(
                request.id, "forbidden",
                f'"{cmd}" needs the {needed} role; key "{key.name}" is {key.role}',
                needed_role=needed), cmd, key, extra
        if request.pid is not None and request.pid != self.pid:
            extra["relayed_to"] = request.pid
            return self._relay_request(request, key, route), cmd, key, extra
        handler = self._handlers.get(cmd)
        if handler is None or cmd not in protocol.COMMANDS:
            return protocol.error_reply(
                request.id, "unknown_command",
                f'unknown command "{cmd}"; this agent knows: '
                f"{', '.join(sorted(self._handlers))}"), cmd, key, extra
        ctx = RequestContext(request.id, cmd, request.args, key, route,
                             via=request.via["door"] if request.via else None)
        try:
            result = handler(ctx)
        except SessionError as exc:
            return protocol.error_reply(request.id, exc.code, str(exc), **exc.details), cmd, \
                key, {**extra, **ctx.audit}
        except RequestError as exc:
            return protocol.error_reply(request.id, exc.code, f"{cmd}: {exc}",
                                        **exc.details), cmd, key, {**extra, **ctx.audit}
        except Exception as exc:  # the boundary: a handler bug becomes an error reply
            _log.warning("command %s failed", cmd, exc_info=True)
            return protocol.error_reply(
                request.id, "internal_error", f"{cmd} failed in the agent: {exc!r}"), cmd, \
                key, {**extra, **ctx.audit}
        return protocol.Reply(id=request.id, result=result), cmd, key, {**extra, **ctx.audit}

    def _members(self, *, missed: bool = False) -> list[dict[str, Any]]:
        """The service's registry entries, read at most once a second (five times when a
        pid was missed: a member that just joined): a fan-out to N members, or an observer
        naming pids that do not exist, must not make the door read the whole registry
        (and /proc) per request."""
        now = time.monotonic()
        if now - self._members_at >= (0.2 if missed else 1.0):
            self._members_cache = list(service_entries(self._runtime_dir(), self.service))
            self._members_at = now
        return self._members_cache

    def _relay_request(self, request: protocol.Request, key: AuthorizedKey,
                       route: Route) -> protocol.Reply | None:
        """Pass ``request`` to the member it names; None when sent (its reply follows)."""
        pid = request.pid or 0
        if request.via is not None:  # relayed once already: no second hop, no loops
            return protocol.error_reply(request.id, "no_member",
                                        f"process {pid} is not this one ({self.pid})")
        relay = self._relay
        if self.service is None or relay is None:
            return protocol.error_reply(
                request.id, "no_member",
                f"process {self.pid} is in no service, so it reaches no other process; "
                f"set PRODBUG_SERVICE (or a fixed port in PRODBUG_LISTEN) in every process "
                f"of the service")
        endpoint = relay.endpoint(route, pid, request.cmd)
        if endpoint is None:
            entries = self._members()
            entry = next((e for e in entries if e.get("pid") == pid), None)
            if entry is None or not registry.pid_alive(pid):
                entries = self._members(missed=True)
                entry = next((e for e in entries if e.get("pid") == pid), None)
            if entry is None:
                pids = ", ".join(str(e.get("pid")) for e in entries) or str(self.pid)
                return protocol.error_reply(
                    request.id, "no_member",
                    f"process {pid} is not a live member of service {self.service!r} "
                    f"(members: {pids}; prodbug ps TARGET lists them)")
            endpoint = str(entry["endpoint"])
        relayed = protocol.Request(
            id=request.id, cmd=request.cmd, args=request.args, version=request.version,
            pid=pid, via={"key": key.public_key, "name": key.name, "role": key.role,
                          "door": self.pid})
        why = relay.forward(route, relayed, endpoint)
        if why is not None:
            return protocol.error_reply(request.id, "busy", why)
        return None


def _as_config_error(exc: BaseException, config: AgentConfig) -> BaseException:
    if isinstance(exc, ProdbugError):
        return exc
    if isinstance(exc, zmq.ZMQError):
        if exc.errno == errno.EADDRINUSE:
            return ConfigError(
                f"cannot listen on {config.listen}: the address is in use; stop the other "
                f"process or pick another port in PRODBUG_LISTEN")
        return ConfigError(f"cannot listen on {config.listen or 'ipc'}: {exc}; "
                           f"check PRODBUG_LISTEN (tcp://HOST:PORT with a local address)")
    if isinstance(exc, OSError):
        return ConfigError(f"agent set-up failed: {exc}")
    return exc


def _close(ctx: zmq.Context[zmq.Socket[bytes]] | None, sockets: list[zmq.Socket[bytes]],
           *fds: int) -> None:
    for sock in sockets:
        with contextlib.suppress(Exception):
            sock.close(linger=0)
    if ctx is not None:
        with contextlib.suppress(Exception):
            ctx.term()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
