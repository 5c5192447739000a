"""C-level stack dumps through faulthandler: on request by signal, and when the GIL is stuck.

When a C call holds the GIL no Python thread runs, so the agent cannot answer. A signal
handler registered with ``faulthandler.register`` still can: it writes every thread's
stack from C, without the GIL.

* **Signal dumps** (unless ``PRODBUG_DUMP_SIGNAL=off``): a free real-time signal dumps
  into ``RUNTIME/PID.dump``; ``prodbug stacks --pid N`` sends it when the agent is silent.
* **Hang dumps** (``PRODBUG_HANG_DUMP=SECONDS``, opt-in): a POSIX timer (kernel-side, no
  thread) sends a second free signal after SECONDS; the agent pushes it back every
  SECONDS/2. Only when no Python thread could run for SECONDS does it fire, and the dump
  lands in ``RUNTIME/PID.hang``.

Why not ``faulthandler.dump_traceback_later``: its C watchdog thread walks frames without
the GIL while Python runs, and re-arming it waits on that thread: under load both have
hung or crashed real processes (CPython gh-140815). A kernel timer fires only when the
agent is starved, and re-arming it is one syscall that waits on nothing. Nor do we touch
``faulthandler.enable()`` or the watchdog: an application's own faulthandler use stays
its own. "Free" signals are checked with ``sigaction`` itself, so a signal the
application handles or ignores is never taken.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["FaultDumps"]

_log = logging.getLogger("prodbug.agent")
_MAX_HANG_READ = 256 * 1024
_CLOCK_MONOTONIC = 1
_SIGEV_SIGNAL = 0


def _libc() -> Any:
    # ctypes (about 1 MB) only when the kernel's own account in /proc is not readable,
    # or for the opt-in hang timer.
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _handled_signals() -> int | None:
    """The signals this process catches or ignores, as a bit mask (signal N is bit N-1),
    from the kernel's account in /proc; None when it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    mask = 0
    found = 0
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigCgt:", b"SigIgn:")):
                    mask |= int(line.split(b":", 1)[1].strip(), 16)
                    found += 1
    except (OSError, ValueError):
        return None
    return mask if found == 2 else None


def _disposition_is_default(signum: int, handled: int | None) -> bool:
    """Whether nothing (Python or C) handles or ignores ``signum`` right now."""
    if signal.getsignal(signum) not in (signal.SIG_DFL, None):
        return False
    if handled is not None:
        return not handled & (1 << (signum - 1))
    libc = _libc()
    if libc is None:
        return False
    import ctypes

    buf = ctypes.create_string_buffer(512)  # larger than any libc's struct sigaction
    if libc.sigaction(signum, None, buf) != 0:
        return False
    return ctypes.c_void_p.from_buffer(buf).value in (None, 0)  # sa_handler == SIG_DFL


def _free_signals(setting: str, wanted: int) -> list[int]:
    if setting == "off":
        return []
    if setting != "auto":
        first = int(setting)
        candidates = [first] + [first + k for k in range(1, 8)]
    else:
        candidates = [signal.SIGRTMIN + k for k in (13, 12, 11, 10, 9, 8, 7)]
    handled = _handled_signals()
    free = [s for s in candidates
            if s < signal.SIGRTMAX and _disposition_is_default(s, handled)]
    return free[:wanted]


class _Timer:
    """A POSIX per-process timer that delivers ``signum`` once, SECONDS after ``arm()``."""

    def __init__(self, signum: int) -> None:
        import ctypes
        import ctypes.util

        class Sigevent(ctypes.Structure):
            _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int),
                        ("sigev_notify", ctypes.c_int), ("_pad", ctypes.c_byte * 48)]

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        self._ctypes = ctypes
        self._timespec, self._itimerspec = Timespec, Itimerspec
        self._lib = _libc()
        if self._lib is None or not hasattr(self._lib, "timer_create"):
            path = ctypes.util.find_library("rt")
            self._lib = ctypes.CDLL(path, use_errno=True) if path else None
        if self._lib is None:
            raise OSError("timer_create is not available")
        self._id = ctypes.c_void_p()
        event = Sigevent(sigev_value=None, sigev_signo=signum, sigev_notify=_SIGEV_SIGNAL)
        if self._lib.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event),
                                  ctypes.byref(self._id)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create failed")

    def arm(self, seconds: float) -> None:
        whole = int(seconds)
        spec = self._itimerspec(it_value=self._timespec(whole, int((seconds - whole) * 1e9)))
        self._lib.timer_settime(self._id, 0, self._ctypes.byref(spec), None)

    def delete(self) -> None:
        self._lib.timer_delete(self._id)


class FaultDumps:
    """The agent's C-level dump machinery for one process."""

    def __init__(self, runtime_dir: Path, pid: int, hang_seconds: float | None,
                 signal_setting: str) -> None:
        self.dump_path = runtime_dir / f"{pid}.dump"
        self.hang_path = runtime_dir / f"{pid}.hang"
        self._pending_path = runtime_dir / f"{pid}.hang-pending"
        self.hang_seconds = hang_seconds
        self.signal_setting = signal_setting
        self.signum: int | None = None
        self.hang_signum: int | None = None
        self.hang_state = "off"
        self._files: dict[int, IO[bytes]] = {}
        self._timer: _Timer | None = None

    def start(self) -> None:
        """Register the signals (only free ones) and arm the hang timer if asked."""
        free = _free_signals(self.signal_setting, 2 if self.hang_seconds else 1)
        if free:
            self.signum = free.pop(0)
            self._register(self.signum, self.dump_path)
        elif self.signal_setting != "off":
            _log.info("no free signal for C-level dumps; the CLI's fallback is unavailable")
        if not self.hang_seconds:
            return
        if not free:
            self.hang_state = "unavailable: no free signal"
            return
        self.hang_signum = free.pop(0)
        try:
            self._timer = _Timer(self.hang_signum)
        except OSError as exc:
            self.hang_state = f"unavailable: {exc}"
            self.hang_signum = None
            return
        self._register(self.hang_signum, self._pending_path)
        self.hang_state = "armed"
        self._timer.arm(self.hang_seconds)

    def _register(self, signum: int, path: Path) -> None:
        old = self._files.pop(signum, None)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        self._files[signum] = f = os.fdopen(fd, "ab", buffering=0)
        faulthandler.register(signum, file=f, all_threads=True, chain=False)
        if old is not None:
            old.close()

    @property
    def poll_timeout_ms(self) -> int | None:
        """How long the agent may sleep before it must push the hang timer back."""
        if self._timer is not None and self.hang_seconds:
            return max(int(self.hang_seconds * 500), 1000)
        return None

    def tick(self) -> None:
        """Every wake-up of the agent: keep a dump that fired, push the timer back."""
        if self._timer is None or not self.hang_seconds or self.hang_signum is None:
            return
        try:
            fired = self._pending_path.stat().st_size > 0
        except OSError:
            fired = False
        if fired:
            os.replace(self._pending_path, self.hang_path)
            self._register(self.hang_signum, self._pending_path)
            _log.warning("no Python thread could run for %gs: C-level dump in %s",
                         self.hang_seconds, self.hang_path)
        self._timer.arm(self.hang_seconds)

    def latest_hang(self) -> dict[str, Any] | None:
        """The last hang dump: when, and its text (bounded); None when there is none."""
        try:
            with open(self.hang_path, "rb") as f:
                text = f.read(_MAX_HANG_READ).decode("utf-8", "replace")
            mtime = os.stat(self.hang_path).st_mtime
        except OSError:
            return None
        return {"time": mtime, "seconds": self.hang_seconds, "text": text}

    def facts(self) -> dict[str, Any]:
        """What the registry and ``info`` say about these dumps."""
        return {"dump_signal": self.signum,
                "dump_file": str(self.dump_path) if self.signum else None,
                "hang_dump": self.hang_state, "hang_seconds": self.hang_seconds}

    def stop(self, *, after_fork: bool = False) -> None:
        """Disarm and unregister; in a forked child, leave the parent's files alone."""
        if self._timer is not None and not after_fork:  # timers are not inherited by fork
            with contextlib.suppress(OSError, AttributeError):
                self._timer.delete()
        self._timer = None
        for signum, f in list(self._files.items()):
            faulthandler.unregister(signum)
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()
        if not after_fork:
            for path in (self.dump_path, self._pending_path, self.hang_path):
                with contextlib.suppress(OSError):
                    path.unlink()
