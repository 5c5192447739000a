"""The door's relay: requests for another process of the service, over its ipc endpoint.

The service's door (the process that holds the TCP port) forwards a request that names
another member's ``pid`` to that member, unchanged but for ``via`` (the operator's key and
role as the door checked them, and the door's pid), and forwards whatever comes back on
that link (the reply, and a session's events) to the operator's route. One link (a DEALER
on the member's ipc socket) per operator connection and member, so that a session's
events reach the operator who opened it and no one else.

Bounded: at most ``MAX_LINKS`` links, ``MAX_PENDING`` unanswered requests per link and
``MAX_INFLIGHT`` bytes of them in all. A link closes as soon as nothing is in flight on it,
unless it carries a debugger session (then after ``IDLE`` seconds of silence, or, when
the table is full, after ``QUIET``: its operator pings every second). A request whose
member exits (or says nothing for ``DEADLINE`` seconds) is answered with ``member_gone``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from prodbug import protocol
from prodbug.agent.context import Route
from prodbug.registry import pid_alive, process_uid

__all__ = ["DEADLINE", "IDLE", "MAX_LINKS", "MAX_PENDING", "Relay"]

MAX_LINKS = 64
MAX_PENDING = 64
#: Seconds a link may sit with nothing in flight before it is closed.
IDLE = 120.0
#: The longest a relayed request may wait for its member (a client gives up sooner).
DEADLINE = 300.0
#: A member's reply may be as large as a client accepts (stacks with locals of many threads).
MAX_REPLY = 256 << 20
#: Bytes of relayed requests still waiting for their replies, all links together: what
#: operators can make the door hold on the way to slow members (door.py's bound, again).
MAX_INFLIGHT = 32 << 20
#: Commands of a debugger session: their link stays open for the session's events; any
#: other link closes once it has nothing in flight.
_SESSION = ("pdb.", "dap.", "session.")
#: A session's link that carried nothing for this long may make room for another operator
#: (its operator pings every second while the session lives).
QUIET = 10.0
_log = logging.getLogger("prodbug.agent")


@dataclass
class _Link:
    sock: zmq.Socket[bytes]
    route: Route
    pid: int
    endpoint: str
    last_used: float
    #: request id -> (when to give up on it, its size)
    pending: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: Carries a debugger session (its events come without a request in flight).
    session: bool = False


def _reply_id(data: bytes) -> str | None:
    """The id of a reply frame (None for a session event), without decoding a large body.

    prodbug encodes ``{"prodbug":1,"id":"...",...}`` for replies and ``"event"`` after the
    version for events; anything else is decoded in full.
    """
    head = b'{"prodbug":1,"id":"'
    if data.startswith(head):
        end = data.find(b'"', len(head))
        if end != -1 and b"\\" not in data[len(head):end]:
            return data[len(head):end].decode("utf-8", "replace")
    if data.startswith(b'{"prodbug":1,"event":'):
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) and "event" not in obj else None
    return rid if isinstance(rid, str) else None


class Relay:
    """Links from the door to the service's other processes (run in the agent thread)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 send: Callable[[Route, bytes], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._send = send
        self._clock = clock
        self._links: dict[tuple[int, bytes, int], _Link] = {}
        self._by_sock: dict[zmq.Socket[bytes], _Link] = {}
        self._inflight = 0

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The links' sockets, to poll with the agent's others."""
        return list(self._by_sock)

    @property
    def pending(self) -> int:
        """Relayed requests not answered yet."""
        return sum(len(link.pending) for link in self._links.values())

    def endpoint(self, route: Route, pid: int) -> str | None:
        """The endpoint of this operator's open link to ``pid``, if there is one (then the
        registry need not be read again for every chunk of a session)."""
        link = self._links.get((id(route[0]), route[1], pid))
        return link.endpoint if link is not None else None

    def forward(self, route: Route, request: protocol.Request, endpoint: str) -> str | None:
        """Send ``request`` (with ``via`` and ``pid`` set) to the member at ``endpoint``;
        None when sent, else why not (for an error reply)."""
        pid = request.pid
        if pid is None:
            return "no pid to relay to"
        key = (id(route[0]), route[1], pid)
        link = self._links.get(key)
        if link is None:
            if len(self._links) >= MAX_LINKS:
                self.check()  # closes what is idle or dead
                self._evict_quiet()
            if len(self._links) >= MAX_LINKS:
                return (f"the door relays for {MAX_LINKS} operator connections already; "
                        f"try again when one has ended")
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
            sock.setsockopt(zmq.SNDHWM, MAX_PENDING)
            sock.setsockopt(zmq.RCVHWM, 1000)  # a pdb session's output, in order
            sock.connect(endpoint)
            link = _Link(sock, route, pid, endpoint, self._clock())
            self._links[key] = link
            self._by_sock[sock] = link
        data = protocol.encode_request(request)
        why = None
        if len(link.pending) >= MAX_PENDING or request.id in link.pending:
            why = f"{MAX_PENDING} requests to process {pid} are waiting for its answer already"
        elif self._inflight + len(data) > MAX_INFLIGHT:
            why = (f"the door holds {self._inflight >> 20} MiB of requests for slow "
                   f"processes already; try again when they have answered")
        else:
            try:
                link.sock.send(data, flags=zmq.NOBLOCK)
            except zmq.Again:
                why = f"process {pid} is not taking requests (its queue is full)"
        if why is not None:
            if not link.pending and not link.session:
                self._close(key)
            return why
        now = self._clock()
        link.last_used = now
        link.session = link.session or request.cmd.startswith(_SESSION)
        link.pending[request.id] = (now + DEADLINE, len(data))
        self._inflight += len(data)
        return None

    def on_readable(self, sock: zmq.Socket[bytes]) -> None:
        """Pass what a member sent on to the operator of its link (bounded per call)."""
        link = self._by_sock.get(sock)
        if link is None:
            return
        for _ in range(1000):
            try:
                data = sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            rid = _reply_id(data)
            if rid is not None:
                self._answered(link, rid)
            link.last_used = self._clock()
            self._send(link.route, data)
            if not link.pending and not link.session:  # one-off requests: nothing follows
                self._close((id(link.route[0]), link.route[1], link.pid))
                return

    def check(self) -> None:
        """Answer requests whose member died or ran out of time; close idle links."""
        now = self._clock()
        for key, link in list(self._links.items()):
            # Gone, or its pid now another user's process: nothing will answer.
            gone = bool(link.pending) and (not pid_alive(link.pid) or process_uid(
                link.pid) not in (None, os.getuid()))
            for rid, (deadline, _size) in list(link.pending.items()):
                if gone or now >= deadline:
                    self._answered(link, rid)
                    why = "exited" if gone else f"did not answer within {DEADLINE:g}s"
                    self._send(link.route, protocol.encode_reply(protocol.error_reply(
                        rid, "member_gone", f"process {link.pid} {why} before replying")))
            if gone or (not link.pending and (now - link.last_used > IDLE
                                              or not link.session)):
                self._close(key)

    def _answered(self, link: _Link, rid: str) -> None:
        done = link.pending.pop(rid, None)
        if done is not None:
            self._inflight -= done[1]

    def _evict_quiet(self) -> None:
        """Make room: close the session link that has been quiet longest, if one is."""
        now = self._clock()
        quiet = [(link.last_used, key) for key, link in self._links.items()
                 if not link.pending and now - link.last_used >= QUIET]
        if quiet:
            self._close(min(quiet)[1])

    def poll_timeout(self, timeout: int | None) -> int | None:
        """Wake once a second while requests are in flight (to notice a dead member), and
        in time to close idle links; otherwise ``timeout`` unchanged."""
        if not self._links:
            return timeout
        wait = 1000 if self.pending else int(IDLE * 1000)
        return wait if timeout is None else min(timeout, wait)

    def close(self) -> None:
        """Close every link (the agent is stopping)."""
        for key in list(self._links):
            self._close(key)

    def _close(self, key: tuple[int, bytes, int]) -> None:
        link = self._links.pop(key, None)
        if link is None:
            return
        self._by_sock.pop(link.sock, None)
        for _deadline, size in link.pending.values():
            self._inflight -= size
        link.pending.clear()
        with contextlib.suppress(zmq.ZMQError):
            link.sock.close(linger=0)
