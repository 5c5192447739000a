"""Per-thread CPU time and scheduler state from ``/proc``, read without giving up the GIL.

Python's own file I/O releases the GIL around every ``open`` and ``read``; while another
thread spins in pure Python, each release costs the agent up to one switch interval (5 ms)
to get it back, so reading 50 threads' stat files took ~100 ms. These reads hit procfs,
which never blocks, so they are made through ``ctypes.PyDLL`` (which keeps the GIL): a few
microseconds per thread. Anywhere else, or if libc cannot be loaded, psutil is used.

CPU time alone comes from the kernel's per-thread CPU clocks where it can: one
``clock_gettime`` each (no file, the GIL kept), in nanoseconds rather than 10 ms ticks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["TaskStat", "boot_clock", "read_cpu_times", "read_task_stats"]

#: (scheduler state letter, CPU seconds user + system, when the thread started: seconds on
#: ``boot_clock``, or None when unknown)
TaskStat = tuple[str, float, float | None]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BUF = 1024
#: Linux's clock id for a thread's CPU time (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)):
#: built from the kernel thread id, so a thread that has exited gives EINVAL, never a read
#: of freed memory (as ``pthread_getcpuclockid`` on a stale pthread_t could).
_CPUCLOCK_SCHED_PERTHREAD = 6


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.open.restype = ctypes.c_int
        libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        libc.read.restype = ctypes.c_ssize_t
        libc.close.argtypes = [ctypes.c_int]
        libc.close.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def _thread_clock(tid: int) -> int:
    return (~tid << 3) | _CPUCLOCK_SCHED_PERTHREAD


def _clocks_work() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import threading

        time.clock_gettime(_thread_clock(threading.get_native_id()))
    except (OSError, OverflowError, AttributeError):
        return False
    return True


_CLOCKS = _clocks_work()


def read_cpu_times(native_ids: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each of this process's threads that still exists."""
    if not _CLOCKS:
        return {tid: stat[1] for tid, stat in read_task_stats(native_ids).items()}
    out: dict[int, float] = {}
    for tid in native_ids:
        try:
            out[tid] = time.clock_gettime(_thread_clock(tid))
        except (OSError, OverflowError):
            continue  # the thread has exited
    return out


def boot_clock() -> float | None:
    """Now on the clock of ``/proc``'s thread start times (seconds since boot), if any."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None or _libc is None:  # the start times come from /proc: Linux only
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


def _parse(data: bytes) -> TaskStat | None:
    try:
        fields = data[data.rindex(b")") + 2:].split()
        return (chr(fields[0][0]), (int(fields[11]) + int(fields[12])) / _TICKS,
                int(fields[19]) / _TICKS)
    except (ValueError, IndexError):
        return None


def _read_stat(path: bytes, buf: ctypes.Array[ctypes.c_char]) -> bytes | None:
    fd = _libc.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if fd < 0:
        return None  # the thread has exited
    try:
        n = _libc.read(fd, buf, _BUF)
    finally:
        _libc.close(fd)
    return buf.raw[:n] if n > 0 else None


def _psutil_stats(native_ids: Iterable[int]) -> dict[int, TaskStat]:
    import psutil

    wanted = set(native_ids)
    with contextlib.suppress(psutil.Error, OSError):
        return {t.id: ("?", t.user_time + t.system_time, None)
                for t in psutil.Process().threads() if t.id in wanted}
    return {}


def read_task_stats(native_ids: Iterable[int]) -> dict[int, TaskStat]:
    """State and CPU seconds of each of this process's threads that still exists."""
    if _libc is None:
        return _psutil_stats(native_ids)
    buf = ctypes.create_string_buffer(_BUF)
    out: dict[int, TaskStat] = {}
    for tid in native_ids:
        data = _read_stat(b"/proc/self/task/%d/stat" % tid, buf)
        stat = _parse(data) if data else None
        if stat is not None:
            out[tid] = stat
    return out
