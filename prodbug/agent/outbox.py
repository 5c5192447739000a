"""What the agent sends, in order, to operators whose link may be slow.

A ROUTER socket drops a message silently when the peer's pipe is full; for a reply that
means a client timing out, for a session's stream (pdb output, DAP bytes) a corrupt
stream. The agent's ROUTER sockets are set ``ROUTER_MANDATORY``, so a full pipe says
``EAGAIN`` instead, and what cannot go now waits here, per route, in order. The queue is
bounded: a route past its bound is marked *overflowed* and its owner decides (a session
ends saying why; nothing is lost without a word). A route whose peer is gone is dropped.
"""

from __future__ import annotations

import errno
from collections import deque

import zmq

__all__ = ["Outbox", "Route"]

Route = tuple[zmq.Socket[bytes], bytes]


class Outbox:
    """Per-route FIFO queues behind non-blocking sends."""

    def __init__(self, limit: int = 32 << 20) -> None:
        self.limit = limit
        self._queues: dict[Route, deque[bytes]] = {}
        self._sizes: dict[Route, int] = {}
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
        queue.append(frame)
        self._sizes[route] += len(frame)
        if self._sizes[route] > self.limit:
            self.overflowed.add(route)
            self._drop(route)

    def queued(self, route: Route | None) -> int:
        """Bytes waiting for ``route``."""
        return self._sizes.get(route, 0) if route is not None else 0

    @property
    def pending(self) -> bool:
        return bool(self._queues)

    def flush(self) -> None:
        """Send what the peers can take now."""
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
            if not queue:
                self._drop(route)

    def forget(self, route: Route) -> None:
        """The route's owner is done with it (a session ended, an overflow was handled)."""
        self._drop(route)
        self.overflowed.discard(route)

    @staticmethod
    def _try(route: Route, frame: bytes) -> str:
        """``sent``, ``again`` (the peer's pipe is full) or ``gone`` (no such peer now)."""
        sock, ident = route
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
