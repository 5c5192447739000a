"""The last unhandled exception in the process, for ``prodbug pdb --post-mortem``.

Chained hooks: ``sys.excepthook`` (the main thread) and ``threading.excepthook`` (other
threads) are wrapped; the wrapper records the exception and always calls the hook that
was there before, so the application's own handling and output are unchanged. Only the
latest exception is kept (its traceback keeps its frames alive: one, not a history).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["Captured", "install", "last", "uninstall"]


@dataclass(frozen=True)
class Captured:
    exc: BaseException
    tb: TracebackType | None
    thread: str
    time: float


_last: Captured | None = None
_previous: dict[str, Any] = {}


def last() -> Captured | None:
    """The latest unhandled exception seen since the agent started."""
    return _last


def _record(exc: BaseException | None, tb: TracebackType | None, thread: str) -> None:
    global _last
    if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
        _last = Captured(exc, tb, thread, time.time())


def _sys_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _record(exc, tb, threading.current_thread().name)
    _previous.get("sys", sys.__excepthook__)(kind, exc, tb)


def _thread_hook(args: Any) -> None:
    thread = args.thread.name if args.thread is not None else "?"
    _record(args.exc_value, args.exc_traceback, thread)
    _previous.get("threading", threading.__excepthook__)(args)


def install() -> None:
    """Wrap both hooks (once)."""
    if "sys" in _previous or "threading" in _previous:
        return
    _previous["sys"] = sys.excepthook
    _previous["threading"] = threading.excepthook
    sys.excepthook = _sys_hook
    threading.excepthook = _thread_hook


def uninstall() -> None:
    """Put the previous hooks back, unless someone wrapped ours since (then leave them)."""
    if not _previous:
        return
    if sys.excepthook is _sys_hook:
        sys.excepthook = _previous.pop("sys")
    if threading.excepthook is _thread_hook:
        threading.excepthook = _previous.pop("threading")
