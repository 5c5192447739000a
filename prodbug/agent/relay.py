"""The door's relay: requests for another process of the service, over its ipc endpoint.

The service's door (the process that holds the TCP port) forwards a request that names
another member's ``pid`` to that member, unchanged but for ``via`` (the operator's key and
role as the door checked them, and the door's pid), and passes what comes back to the
operator who asked. Two kinds of link (a DEALER on the member's ipc socket):

* one **shared** link per member for one-off requests (``stacks``, ``info``, ...): each
  request gets an id of the door's on the way in (several operators may use the same id)
  and its own id back on the reply;
* one link per operator connection and member for a **debugger session** (``pdb.*``,
  ``dap.*``, ``session.*``): the session's events come on it without a request in flight,
  and reach the operator who opened the session and no one else.

Bounded: ``MAX_SESSION_LINKS`` session links (when full, one quiet for ``QUIET`` seconds
makes room: its operator pings every second while the session lives), ``MAX_PENDING``
unanswered requests per link and ``MAX_INFLIGHT`` bytes of them in all. A request whose
member exits, or says nothing for ``DEADLINE`` seconds, is answered ``member_gone``; a
member that hangs fills only its own link, never another member's. Links with nothing in
flight close after ``IDLE`` seconds.
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

__all__ = ["DEADLINE", "IDLE", "MAX_INFLIGHT", "MAX_PENDING", "MAX_SESSION_LINKS", "Relay"]

MAX_SESSION_LINKS = 64
MAX_PENDING = 64
#: Seconds a link may sit with nothing in flight before it is closed.
IDLE = 120.0
#: The longest a relayed request may wait for its member (a client gives up sooner).
DEADLINE = 120.0
#: A member's reply may be as large as a client accepts (stacks with locals of many threads).
MAX_REPLY = 256 << 20
#: Bytes of relayed requests still waiting for their replies, all links together: what
#: operators can make the door hold on the way to slow members (door.py's bound, again).
MAX_INFLIGHT = 32 << 20
#: Commands of a debugger session: they go on the operator's own link to the member.
_SESSION = ("pdb.", "dap.", "session.")
#: A session link that carried nothing for this long may make room for another operator.
QUIET = 10.0
_log = logging.getLogger("prodbug.agent")

_Key = tuple[object, ...]


@dataclass
class _Pending:
    deadline: float
    size: int
    route: Route
    original_id: str


@dataclass
class _Link:
    sock: zmq.Socket[bytes]
    pid: int
    endpoint: str
    last_used: float
    #: The operator of a session link; None for a member's shared link.
    session_route: Route | None
    pending: dict[str, _Pending] = field(default_factory=dict)


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


def _with_id(data: bytes, relayed: str, original: str) -> bytes:
    """The reply ``data`` (to the door's id ``relayed``) with the operator's id back."""
    head = b'{"prodbug":1,"id":"' + relayed.encode() + b'"'
    if data.startswith(head):
        return b'{"prodbug":1,"id":' + json.dumps(original).encode() + data[len(head):]
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if isinstance(obj, dict):
        obj["id"] = original
        return json.dumps(obj, separators=(",", ":")).encode()
    return data


class Relay:
    """Links from the door to the service's other processes (run in the agent thread)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 send: Callable[[Route, bytes], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._send = send
        self._clock = clock
        self._links: dict[_Key, _Link] = {}
        self._by_sock: dict[zmq.Socket[bytes], _Link] = {}
        self._inflight = 0
        self._seq = 0

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The links' sockets, to poll with the agent's others."""
        return list(self._by_sock)

    @property
    def pending(self) -> int:
        """Relayed requests not answered yet."""
        return sum(len(link.pending) for link in self._links.values())

    @staticmethod
    def _key(route: Route, pid: int, cmd: str) -> _Key:
        if cmd.startswith(_SESSION):
            return ("session", id(route[0]), route[1], pid)
        return ("member", pid)

    def endpoint(self, route: Route, pid: int, cmd: str) -> str | None:
        """The endpoint of the open link that ``cmd`` to ``pid`` would take, if any (then
        the registry need not be read again for every chunk of a session)."""
        link = self._links.get(self._key(route, pid, cmd))
        return link.endpoint if link is not None else None

    def forward(self, route: Route, request: protocol.Request, endpoint: str) -> str | None:
        """Send ``request`` (with ``via`` and ``pid`` set) to the member at ``endpoint``;
        None when sent, else why not (for a ``busy`` reply)."""
        pid = request.pid
        if pid is None:
            return "no pid to relay to"
        key = self._key(route, pid, request.cmd)
        session = key[0] == "session"
        link = self._links.get(key)
        if link is None:
            if session and self._session_links() >= MAX_SESSION_LINKS:
                self.check()  # closes what is idle or dead
                self._evict_quiet()
                if self._session_links() >= MAX_SESSION_LINKS:
                    return (f"the door relays {MAX_SESSION_LINKS} debugger sessions already; "
                            f"try again when one has ended")
            link = self._open(key, pid, endpoint, route if session else None)
        if session:
            relayed_id = request.id
            data = protocol.encode_request(request)
        else:  # the shared link: an id of ours, unique on it whoever asked
            self._seq += 1
            relayed_id = f"r{self._seq}"
            data = protocol.encode_request(protocol.Request(
                id=relayed_id, cmd=request.cmd, args=request.args, version=request.version,
                pid=pid, via=request.via))
        why = None
        if len(link.pending) >= MAX_PENDING or relayed_id in link.pending:
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
            return why
        now = self._clock()
        link.last_used = now
        link.pending[relayed_id] = _Pending(now + DEADLINE, len(data), route, request.id)
        self._inflight += len(data)
        return None

    def on_readable(self, sock: zmq.Socket[bytes]) -> None:
        """Pass what a member sent on to whoever it is for (bounded per call)."""
        link = self._by_sock.get(sock)
        if link is None:
            return
        for _ in range(1000):
            try:
                data = sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            link.last_used = self._clock()
            rid = _reply_id(data)
            waiting = link.pending.pop(rid, None) if rid is not None else None
            if waiting is not None:
                self._inflight -= waiting.size
                if link.session_route is None:
                    data = _with_id(data, rid or "", waiting.original_id)
                self._send(waiting.route, data)
            elif link.session_route is not None:  # a session's event
                self._send(link.session_route, data)
            # else: nothing on a shared link is unasked for; a reply to a request already
            # answered member_gone is dropped

    def check(self) -> None:
        """Answer requests whose member died or ran out of time; close idle links."""
        now = self._clock()
        for key, link in list(self._links.items()):
            # Gone, or its pid now another user's process: nothing will answer.
            gone = not pid_alive(link.pid) or process_uid(link.pid) not in (None, os.getuid())
            for rid, waiting in list(link.pending.items()):
                if gone or now >= waiting.deadline:
                    del link.pending[rid]
                    self._inflight -= waiting.size
                    why = "exited" if gone else f"did not answer within {DEADLINE:g}s"
                    self._send(waiting.route, protocol.encode_reply(protocol.error_reply(
                        waiting.original_id, "member_gone",
                        f"process {link.pid} {why} before replying")))
            if gone or (not link.pending and now - link.last_used > IDLE):
                self._close(key)

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

    def _session_links(self) -> int:
        return sum(1 for link in self._links.values() if link.session_route is not None)

    def _open(self, key: _Key, pid: int, endpoint: str, session_route: Route | None) -> _Link:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
        sock.setsockopt(zmq.SNDHWM, MAX_PENDING)
        sock.setsockopt(zmq.RCVHWM, 1000)  # a pdb session's output, in order
        sock.connect(endpoint)
        link = _Link(sock, pid, endpoint, self._clock(), session_route)
        self._links[key] = link
        self._by_sock[sock] = link
        return link

    def _evict_quiet(self) -> None:
        """Make room: close the session link that has been quiet longest, if one is."""
        now = self._clock()
        quiet = [(link.last_used, n, key) for n, (key, link) in enumerate(self._links.items())
                 if link.session_route is not None and not link.pending
                 and now - link.last_used >= QUIET]
        if quiet:
            self._close(min(quiet)[2])

    def _close(self, key: _Key) -> None:
        link = self._links.pop(key, None)
        if link is None:
            return
        self._by_sock.pop(link.sock, None)
        for waiting in link.pending.values():
            self._inflight -= waiting.size
        link.pending.clear()
        with contextlib.suppress(zmq.ZMQError):
            link.sock.close(linger=0)
