"""Freeze a process's Python: one thread blocks in a C call that keeps the GIL.

``ctypes.PyDLL`` calls keep the GIL (``CDLL`` ones release it), so a thread blocked in
``read(2)`` through it stops every other Python thread, the agent's included, until a
byte arrives on the descriptor: a frozen agent the test ends when it chooses, not after a
computation timed to last long enough. faulthandler's signal handlers still run (in C).
"""

from __future__ import annotations

import ctypes

_LIBC = ctypes.PyDLL(None)
_LIBC.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_LIBC.write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]


def hold_the_gil(fd: int, say: bytes) -> None:
    """Write ``say`` to stdout, then block in read(fd) with the GIL held: no Python runs
    in between (``say`` is written from C too), so once the line is out the agent is
    frozen until a byte arrives on ``fd``."""
    buf = ctypes.create_string_buffer(64)
    _LIBC.write(1, say, len(say))
    _LIBC.read(fd, buf, 64)
