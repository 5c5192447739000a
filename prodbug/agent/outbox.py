"""What the agent sends, in order, to operators whose link may be slow.

A ROUTER socket drops a message silently when the peer's pipe is full; for a reply that
means a client timing out, for a session's stream (pdb output, DAP bytes) a corrupt
stream. The agent's ROUTER sockets are set ``ROUTER_MANDATORY``, so a full pipe says
``EAGAIN`` instead, and what cannot go now waits here, per route, in order. The queue is
bounded: a route past its bound is marked *overflowed* and its owner decides (a session
ends saying why; nothing is lost without a word). So is a route whose peer has taken
nothing for ``stall`` seconds (its queue is let go: a stalled peer must not keep memory
held, nor keep the agent waking up). A route whose peer is gone is dropped.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from typing import Any

import zmq

__all__ = ["Outbox", "Route"]

Route = tuple[zmq.Socket[bytes], bytes]


def _load_zmq_send() -> Any:
    """libzmq's ``zmq_send`` called through ``ctypes.PyDLL``, which keeps the GIL: pyzmq
    gives the GIL away around every frame it sends, and while a host thread spins each
    release costs the agent a switch interval (5 ms) to get it back. A non-blocking send
    on a ROUTER never waits (a full pipe says EAGAIN).

    The symbol is looked up through pyzmq's own backend module, so it is the libzmq that
    pyzmq's sockets belong to (linked in, or a library it loaded), never another libzmq
    the host may have loaded too. None (pyzmq's own send) when it cannot be found."""
    import ctypes  # on the first reply, not at the host's start
    import importlib

    try:
        backend = importlib.import_module("zmq.backend.cython._zmq")
        lib = ctypes.PyDLL(backend.__file__, use_errno=True)
        send = lib.zmq_send
        send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        send.restype = ctypes.c_int
        lib.zmq_errno.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    return lib


_LIBZMQ: Any = None
_LIBZMQ_LOADED = False


class Outbox:
    """Per-route FIFO queues behind non-blocking sends."""

    def __init__(self, limit: int = 32 << 20, stall: float = 30.0) -> None:
        self.limit = limit
        self.stall = stall
        self._queues: dict[Route, deque[bytes]] = {}
        self._sizes: dict[Route, int] = {}
        self._progress: dict[Route, float] = {}
        #: Routes whose owner must be told (a session ends); bounded by ``forget``, and
        #: cleared of routes nobody claims (see ``flush``).
        self.overflowed: set[Route] = set()

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` now if the route is clear, else queue it behind the others."""
        if route in self.overflowed:
            return
        queue = self._queues.get(route)
        if queue is None:
            if self._try(route, frame) != "again":
                return
            queue = self._queues[route] = deque()
            self._sizes[route] = 0
            self._progress[route] = time.monotonic()
        queue.append(frame)
        self._sizes[route] += len(frame)
        if self._sizes[route] > self.limit:
            self.overflowed.add(route)
            self._drop(route)

    def queued(self, route: Route | None) -> int:
        """Bytes waiting for ``route``."""
        return self._sizes.get(route, 0) if route is not None else 0

    @property
    def total(self) -> int:
        """Bytes waiting for all routes together (``info`` shows it)."""
        return sum(self._sizes.values())

    @property
    def pending(self) -> bool:
        return bool(self._queues)

    def retry_ms(self) -> int:
        """How soon to flush again: soon while peers are taking, seldom once they stall."""
        now = time.monotonic()
        return 10 if any(now - t < 1.0 for t in self._progress.values()) else 250

    def flush(self) -> None:
        """Send what the peers can take now; let go of peers that took nothing for long."""
        now = time.monotonic()
        for route in list(self._queues):
            queue = self._queues[route]
            while queue:
                outcome = self._try(route, queue[0])
                if outcome == "again":
                    break
                if outcome == "gone":
                    queue.clear()
                    break
                self._sizes[route] -= len(queue.popleft())
                self._progress[route] = now
            if not queue:
                self._drop(route)
            elif now - self._progress[route] > self.stall:
                self.overflowed.add(route)
                self._drop(route)
        if len(self.overflowed) > 256:  # routes nobody claimed (plain replies): forget
            self.overflowed.clear()

    def forget(self, route: Route) -> None:
        """The route's owner is done with it (a session ended, an overflow was handled)."""
        self._drop(route)
        self.overflowed.discard(route)

    @staticmethod
    def _try(route: Route, frame: bytes) -> str:
        """``sent``, ``again`` (the peer's pipe is full) or ``gone`` (no such peer now)."""
        sock, ident = route
        global _LIBZMQ, _LIBZMQ_LOADED
        if not _LIBZMQ_LOADED:
            _LIBZMQ, _LIBZMQ_LOADED = _load_zmq_send(), True
        if _LIBZMQ is not None and not sock.closed:
            handle = sock.underlying
            if _LIBZMQ.zmq_send(handle, ident, len(ident), zmq.SNDMORE | zmq.DONTWAIT) < 0 \
                    or _LIBZMQ.zmq_send(handle, frame, len(frame), zmq.DONTWAIT) < 0:
                code = _LIBZMQ.zmq_errno()
                if code == errno.EAGAIN:
                    return "again"
                if code == errno.EHOSTUNREACH:
                    return "gone"
                raise zmq.ZMQError(code)
            return "sent"
        try:
            sock.send_multipart([ident, frame], flags=zmq.NOBLOCK)
        except zmq.Again:
            return "again"
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:  # nobody to deliver to
                return "gone"
            raise
        return "sent"

    def _drop(self, route: Route) -> None:
        self._queues.pop(route, None)
        self._sizes.pop(route, None)
        self._progress.pop(route, None)
