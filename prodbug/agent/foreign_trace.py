"""Installing a trace function in threads that are already running (Python 3.10 / 3.11).

Before 3.12 a trace function can only be set by the thread itself (``sys.settrace``), or
for threads started later (``threading.settrace``). debugpy, already a dependency, ships
pydevd, whose ``pydevd_tracing.set_trace_to_threads`` sets one in other threads' states
through a small native helper in its wheel (``attach_linux_amd64.so`` and friends): every
VS Code attach on those versions relies on it. prodbug uses that helper rather than a
ctypes hack of its own. It is imported only when first needed (pdb ``--break`` /
``--thread`` on 3.10/3.11), with pydevd's warnings sent to a file, and the host's
environment left as it was.

Where the helper is missing (another platform, another architecture), ``available()``
says why in one line and the callers fall back to what ``threading.settrace`` reaches.
This is the one mechanism pdb uses, and the one snapshots and logpoints will use.

``remove_trace_in_threads`` is the way back: after a VS Code session the agent takes
debugpy's trace function out of every thread it had put one in (dap.py), through the same
helper.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

__all__ = ["Tracer", "available", "cleared_threads", "pydevd_environment",
           "remove_trace_in_threads", "set_trace_in_threads"]

Tracer = Callable[[FrameType, str, Any], Any]
_log = logging.getLogger("prodbug.agent")
_lock = threading.Lock()
_helper: Any = None
_why_not: str | None = None
#: sys.settrace as the interpreter has it (pydevd replaces ``sys.settrace`` with a wrapper
#: that writes warnings to stderr); set by ``remove_trace_in_threads``.
_settrace: Callable[[Any], None] = sys.settrace
#: Threads that have dropped their trace function since the last removal (bounded).
_cleared: set[int] = set()


@contextlib.contextmanager
def pydevd_environment(log_file: str) -> Iterator[None]:
    """Around importing or setting up pydevd: its messages go to ``log_file``, never to the
    host's stderr, and afterwards the host's environment is as it was (the variables pydevd
    reads at import are unset again, those it exports for the children it would debug are
    removed): the host's child processes never inherit any of it."""
    wanted = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYDEVD_DEBUG_FILE": log_file}
    saved = {name: os.environ.get(name) for name in wanted}
    before = set(os.environ)
    try:
        for name, value in wanted.items():
            os.environ.setdefault(name, value)
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        for name in set(os.environ) - before:
            if name.startswith(("PYDEVD", "DEBUGPY")):
                os.environ.pop(name, None)


def _load() -> Any:
    """pydevd_tracing with its native helper loaded, or None (``_why_not`` says why)."""
    global _helper, _why_not
    with _lock:
        if _helper is not None or _why_not is not None:
            return _helper
        if sys.version_info >= (3, 12):
            _why_not = "not needed: Python 3.12+ has sys.monitoring"
            return None
        if sys.implementation.name != "cpython":
            _why_not = f"needs CPython, this is {sys.implementation.name}"
            return None
        try:
            with pydevd_environment(os.devnull):  # its warnings never reach the host
                import debugpy._vendored.force_pydevd  # noqa: F401  (pydevd's import path)
                import pydevd_tracing  # type: ignore[import-not-found]

                if pydevd_tracing._load_python_helper_lib() is None:
                    _why_not = (f"debugpy has no native helper for this platform "
                                f"({sys.platform}, {os.uname().machine})")
                    return None
            _helper = pydevd_tracing
        except Exception as exc:  # a missing or broken debugpy: say so, fall back
            _why_not = f"debugpy's pydevd_tracing could not be loaded: {exc}"
            _log.warning("prodbug: %s", _why_not, exc_info=True)
        return _helper


def available() -> tuple[bool, str | None]:
    """Whether running threads can be traced here; if not, why (one line)."""
    return _load() is not None, _why_not


def set_trace_in_threads(tracer: Tracer, idents: Iterable[int]) -> list[int]:
    """Make each thread in ``idents`` call ``tracer`` from its next event on; returns the
    idents where that failed. The calling thread is never one of them."""
    helper = _load()
    if helper is None:
        raise RuntimeError(_why_not or "unavailable")
    failed = []
    me = threading.get_ident()
    for ident in idents:
        if ident == me:
            continue
        try:
            if helper.set_trace_to_threads(tracer, thread_idents=[ident],
                                           create_dummy_thread=False) != 0:
                failed.append(ident)
        except Exception:  # a thread that ended meanwhile, or the helper's refusal
            failed.append(ident)
    return failed


def _untrace(frame: FrameType, event: str, arg: Any) -> None:
    """Put in a thread by ``remove_trace_in_threads``: at that thread's next Python event it
    takes every trace function out of the thread, itself included. One module-level object
    so that it is never freed while it runs (``settrace(None)`` drops the thread's
    reference to it)."""
    _settrace(None)
    frame.f_trace = None
    if len(_cleared) < 100_000:
        _cleared.add(threading.get_ident())


def cleared_threads() -> set[int]:
    """The idents of threads that have dropped their trace function since the last
    ``remove_trace_in_threads``."""
    return set(_cleared)


def remove_trace_in_threads(idents: Iterable[int]) -> list[int]:
    """Take the trace function out of each thread in ``idents`` (3.10/3.11), and the local
    trace functions out of the frames on its stack; returns the idents where that failed.

    A thread cannot be untraced from outside, so each is given ``_untrace`` as its trace
    function (and its innermost frame's): it drops it, and tracing altogether, at its next
    Python event. A thread blocked in C code does so when it returns to Python, at no cost
    meanwhile. The calling thread is never one of them.
    """
    global _settrace
    helper = _load()
    if helper is None:
        raise RuntimeError(_why_not or "unavailable")
    holder = getattr(helper, "TracingFunctionHolder", None)
    _settrace = getattr(holder, "_original_tracing", None) or sys.settrace
    _cleared.clear()
    frames = sys._current_frames()
    failed = []
    me = threading.get_ident()
    for ident in idents:
        frame = frames.get(ident)
        if ident == me or frame is None:
            continue
        try:
            done = helper.set_trace_to_threads(_untrace, thread_idents=[ident],
                                               create_dummy_thread=False) == 0
        except Exception:  # the helper's refusal
            done = False
        if not done:
            if ident in sys._current_frames():  # not one that ended meanwhile
                failed.append(ident)
            continue
        frame.f_trace = _untrace
        outer = frame.f_back
        while outer is not None:
            outer.f_trace = None
            outer = outer.f_back
    return failed
