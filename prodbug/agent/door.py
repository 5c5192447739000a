"""The TCP door: how many connections the agent lets in, and when it stops accepting.

libzmq accepts TCP connections in its I/O thread, without a limit, and each one is a file
descriptor of the host's. What libzmq 4.3.5 does when the process has none left (read in
its source, and measured here):

* a TCP ``accept`` that fails with EMFILE leaves the connection in the backlog: the
  listener stays readable and the I/O thread spins (~78,000 failed accepts a second);
* an ipc ``accept`` that fails with EMFILE aborts the process (``errno_assert`` in
  ipc_listener.cpp): a local ``prodbug`` call then kills the host (exit 134);
* ``zmq_unbind`` closes the listener *and* every connection accepted through it, with no
  DISCONNECTED event for them.

So a monitor socket counts the TCP connections, and the door shuts (unbinds the endpoint)
when ``MAX_CONNECTIONS`` are open, when the process has fewer than ``headroom()`` file
descriptors left, or when an accept fails for want of them. After a cool-down (1 s,
doubling while it keeps happening, at most 8 s) it binds the same address again.
``HANDSHAKE_IVL_MS`` drops a connection whose handshake has not completed (an idle one, or
one whose key check waits on a GIL held elsewhere). What queued requests can make the
host hold is bounded too: ``MAX_CONNECTIONS`` x (``RECEIVE_HWM`` + 1 being read) x
MAXMSGSIZE, 160 MiB with the defaults (131 MiB measured for 31 peers).

The door logs one warning per episode (its first shut after a quiet minute), never per
connection. What it cannot do: it reacts in Python, so while a C call holds the GIL the
I/O thread accepts without limit (idle peers still go after HANDSHAKE_IVL_MS); libzmq has
no limit of its own to set.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import struct
import time
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["HANDSHAKE_IVL_MS", "MAX_CONNECTIONS", "RECEIVE_HWM", "DenialLimiter", "Door",
           "free_fds", "headroom"]

#: A connection that has not completed its handshake by then is dropped (libzmq: 30 s).
HANDSHAKE_IVL_MS = 5000
#: TCP connections open at once, authenticated or not; the door shuts at this many.
MAX_CONNECTIONS = 32
#: Requests queued per peer (plus the one being read): with MAXMSGSIZE, what a peer can
#: make the host hold.
RECEIVE_HWM = 4
COOL_DOWN = 1.0
MAX_COOL_DOWN = 8.0
#: An episode ends when the door has not had to shut for this long.
QUIET = 60.0
#: Monitor events handled per wake-up; the rest wait for the next one (bounded work).
_BATCH = 2048
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_ACCEPT_FAILED | zmq.EVENT_DISCONNECTED
#: Why an accept failed, when that means "out of resources" (a peer that reset its
#: connection first makes an accept fail too: no reason to shut).
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_log = logging.getLogger("prodbug.agent")


def headroom(soft_limit: int) -> int:
    """File descriptors the agent leaves free for the host: 10% of the limit, at least 256.

    The floor covers a burst: the I/O thread goes on accepting until the agent thread (in
    Python, behind the GIL) has unbound, and up to ~150 connections got in past the cap
    that way here (1,100 connects from one process over loopback), and more than 256 once
    on a loaded 2-core CI machine, where the agent thread waited for a CPU.
    """
    return max(256, soft_limit // 10)


def free_fds() -> tuple[int, int] | None:
    """(free, soft limit) of this process's file descriptors, or None where unknown."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))  # one open fd of its own, while it reads
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return 0, soft  # could not even open the directory
        return None  # no /proc here
    return soft - used, soft


class Door:
    """Binds ``address`` on ``sock`` and unbinds it while the host needs protecting.

    Call ``bind()`` once (it raises what ``zmq_bind`` raises), poll ``monitor`` with the
    other sockets, pass the poll's result to ``after_poll`` and the poll timeout through
    ``poll_timeout``. The caller closes ``monitor`` with its other sockets.
    """

    def __init__(self, sock: zmq.Socket[bytes], address: str, *,
                 max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._address = address
        self.max_connections = max_connections
        self._clock = clock
        # Created before the first bind (so no accept is missed) and while fds are
        # plentiful: a socket made later could fail for want of one.
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(_EVENTS)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.endpoint: str | None = None
        self.is_open = False
        self._fds: set[int] = set()
        self._reopen_at = 0.0
        self._cool_down = COOL_DOWN
        self._last_shut = -QUIET - 1.0
        self._episode_logged = False
        self._failed_once = False
        #: Times the door shut since the agent started (for diagnostics).
        self.shut_count = 0

    @property
    def connections(self) -> int:
        """TCP connections open now, as far as the monitor has told."""
        return len(self._fds)

    def bind(self) -> str:
        """Bind for the first time; returns the endpoint (with the port a ``*`` got)."""
        self._sock.bind(self._address)
        self.endpoint = self._sock.get_string(zmq.LAST_ENDPOINT)
        self.is_open = True
        return self.endpoint

    def poll_timeout(self, timeout: int | None) -> int | None:
        """``timeout`` (ms, None = none), shortened while shut so that it reopens in time."""
        if self.is_open or self.endpoint is None:
            return timeout
        wait = max(0, int((self._reopen_at - self._clock()) * 1000) + 1)
        return wait if timeout is None else min(timeout, wait)

    def after_poll(self, events: dict[Any, int]) -> None:
        """Take the monitor's events out of ``events``; shut or reopen as needed.

        Never raises: a failure here is logged once and the agent serves on.
        """
        try:
            if events.pop(self.monitor, 0):
                self._drain()
            if not self.is_open and self.endpoint is not None \
                    and self._clock() >= self._reopen_at:
                self._reopen()
        except zmq.ContextTerminated:
            raise
        except Exception:
            if not self._failed_once:
                _log.warning("the TCP connection guard failed; serving on", exc_info=True)
            self._failed_once = True

    def _drain(self) -> None:
        # Free descriptors are counted once per wake-up, at its first accept (the count
        # then includes every connection accepted so far), and each later accept is taken
        # off that count: in a burst the door shuts early rather than late.
        free: tuple[int, int] | None = None
        counted = False
        for _ in range(_BATCH):
            try:
                frames = self.monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if not self.is_open or not frames or len(frames[0]) < 6:
                continue  # shut: the old listener's last words, its connections are gone
            kind, value = struct.unpack_from("=HI", frames[0])
            if kind == zmq.EVENT_DISCONNECTED:
                self._fds.discard(value)
            elif kind == zmq.EVENT_ACCEPT_FAILED and value in _EXHAUSTED:
                self._shut(f"accepting a TCP connection failed: {os.strerror(value)}")
            elif kind == zmq.EVENT_ACCEPTED:
                self._fds.add(value)
                if not counted:
                    free, counted = free_fds(), True
                elif free is not None:
                    free = (free[0] - 1, free[1])
                if free is not None and free[0] < headroom(free[1]):
                    self._shut(f"only {free[0]} of {free[1]} file descriptors are free and "
                               f"the host keeps {headroom(free[1])} (raise its ulimit -n if "
                               f"that is its normal use)")
                elif len(self._fds) >= self.max_connections:
                    self._shut(f"{len(self._fds)} TCP connections are open, the most it "
                               f"takes at once")

    def _shut(self, reason: str) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        with contextlib.suppress(zmq.ZMQError):  # already gone: shut all the same
            self._sock.unbind(endpoint)
        self.is_open = False
        self._fds.clear()  # unbinding dropped them all
        now = self._clock()
        episode = now - self._last_shut > QUIET
        self._cool_down = COOL_DOWN if episode else min(self._cool_down * 2, MAX_COOL_DOWN)
        self._last_shut = now
        self._reopen_at = now + self._cool_down
        self.shut_count += 1
        if episode:
            self._episode_logged = True
            _log.warning("not accepting TCP connections on %s for now: %s; the open ones were "
                         "dropped (clients reconnect by themselves)", endpoint, reason)

    def _reopen(self) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        counted = free_fds()
        if counted is not None and counted[0] < headroom(counted[1]):
            self._reopen_at = self._clock() + self._cool_down  # still short: wait on
            return
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._reopen_at = self._clock() + MAX_COOL_DOWN
            if self._episode_logged:  # once per episode, like the warning that shut it
                _log.warning("cannot listen on %s again yet: %s; retrying", endpoint, exc)
                self._episode_logged = False
            return
        self._fds.clear()
        self.is_open = True


class DenialLimiter:
    """A budget of audit records for refused handshakes: ``budget`` per ``window`` seconds.

    ``allow()`` says whether to record this denial; the ones it refuses are counted, and
    ``take_suppressed()`` returns that count once their window is over (then zero), for
    one summary record.
    """

    def __init__(self, budget: int = 20, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.window = window
        self._clock = clock
        self._window_start = -window - 1.0
        self._used = 0
        self._suppressed = 0  # in the current window
        self._pending = 0  # from windows that are over, not yet taken

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start >= self.window:
            self._pending += self._suppressed
            self._window_start, self._used, self._suppressed = now, 0, 0

    def allow(self) -> bool:
        """True while this window's budget lasts; otherwise count the denial and say no."""
        self._roll()
        if self._used < self.budget:
            self._used += 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """Denials left unrecorded in windows that are over (each counted once)."""
        self._roll()
        pending, self._pending = self._pending, 0
        return pending
