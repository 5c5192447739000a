"""Carriers for TARGET schemes that need one (``ssh://``, ``kube://``): each module
registers an opener in ``prodbug.connect.CARRIERS`` when imported.

Both start a helper process (ssh, kubectl) that must not outlive the CLI, even when the
CLI is killed with SIGKILL: ``spawn`` starts it with ``PR_SET_PDEATHSIG`` on Linux, from
one long-lived thread (the signal fires when the *thread* that started the child ends,
and a fleet opens tunnels from pool threads).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["spawn"]


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent thread ends (Linux).

    Everything is looked up before the fork: the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    set_pdeathsig = ctypes.c_int(1)  # PR_SET_PDEATHSIG
    sigkill = ctypes.c_ulong(signal.SIGKILL)
    zero = ctypes.c_ulong(0)

    def preexec() -> None:
        prctl(set_pdeathsig, sigkill, zero, zero, zero)
        if os.getppid() != parent:  # prodbug died before the call: nobody to serve
            os._exit(1)

    return preexec


class _Spawner:
    """Starts processes from one daemon thread. ``PR_SET_PDEATHSIG`` fires when the
    *thread* that started the child ends, so a kubectl started from a short-lived thread
    (a pool's, for many pods at once) would die with it; this thread ends only with the
    process."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[list[str], dict[str, Any],
                                      Future[subprocess.Popen[bytes]]]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="prodbug-spawner",
                                                daemon=True)
                self._thread.start()
        self._jobs.put((argv, kwargs, future))
        return future.result()

    def _run(self) -> None:
        while True:
            argv, kwargs, future = self._jobs.get()
            try:
                # The child runs one prepared libc call, no import and no lock of ours:
                # what makes preexec_fn unsafe beside other threads does not arise.
                preexec = _die_with_parent()
                future.set_result(subprocess.Popen(argv, preexec_fn=preexec,  # noqa: PLW1509
                                                   **kwargs))
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` for a child that dies with this process."""
    return _SPAWNER.popen(argv, **kwargs)
