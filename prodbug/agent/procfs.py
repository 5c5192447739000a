"""Per-thread CPU time and scheduler state from ``/proc``, read without giving up the GIL.

Python's own file I/O releases the GIL around every ``open`` and ``read``; while another
thread spins in pure Python, each release costs the agent up to one switch interval (5 ms)
to get it back, so reading 50 threads' stat files took ~100 ms. These reads hit procfs,
which never blocks, so they are made through ``ctypes.PyDLL`` (which keeps the GIL): a few
microseconds per thread. Anywhere else, or if libc cannot be loaded, psutil is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["TaskStat", "read_task_stats"]

#: (scheduler state letter, CPU seconds user + system)
TaskStat = tuple[str, float]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BUF = 1024


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


def _parse(data: bytes) -> TaskStat | None:
    try:
        fields = data[data.rindex(b")") + 2:].split()
        return chr(fields[0][0]), (int(fields[11]) + int(fields[12])) / _TICKS
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
        return {t.id: ("?", t.user_time + t.system_time)
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
