"""``memory``: where the host's memory is, without stopping it or running its code.

One-shot (``memory``): RSS now and at its peak, its trend over the readings kept, the
collector's counters, and the top object types by count and by shallow size. Counting
starts from ``gc.get_objects`` (the containers the collector tracks) and goes one level
down to what they hold that it does not track (str, bytes, bytearray, int, ...). It is
bounded: at most ``SAMPLE`` containers are looked at (every k-th one of the collector's
list when there are more, the counts scaled by k) and at most ``REFERENTS`` untracked
objects below them, within ``BUDGET`` seconds of work, in slices of ``SLICE`` seconds each
followed by a pause as long (the host keeps the GIL at least half of the time). ``deep``
looks at every one, with a larger budget.

Nothing of the host's runs: an object is known by ``type(obj)``, a type by its id (a
metaclass's ``__hash__`` or ``__eq__`` never runs) and its name read through ``type``'s own
slots; a size is asked only of the C ``__sizeof__`` of the nearest static type of the
``builtins`` module on the object's MRO (``object`` at worst), never of a ``__sizeof__``
a class of the host defines (``sys.getsizeof`` would call it).

Session (``memory.open``): tracemalloc for a few seconds, then the allocation sites that
grew most; tracemalloc is stopped when the session ends, however it ends, unless the
host was tracing already (then it is only read).
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from prodbug.agent.context import number_arg
from prodbug.agent.introspect import (
    MISSING,
    mro,
    namespace_get,
    qualified_name,
    type_module,
    type_qualname,
)
from prodbug.agent.session import Event, Session
from prodbug.errors import BadRequest, RequestError

__all__ = ["MemorySession", "memory", "memory_open", "note_rss", "read_rss"]

log = logging.getLogger("prodbug.agent")

#: Tracked containers looked at without ``deep`` (a stride through the rest).
SAMPLE = 200_000
#: Untracked objects (below the containers looked at) counted without ``deep``.
REFERENTS = 200_000
#: Seconds of work the walk may take (pauses not counted): without ``deep``, and with it.
BUDGET = 2.0
DEEP_BUDGET = 5.0
#: The walk works in slices this long, each followed by a pause as long: the host keeps
#: at least half of the time (and the GIL) while it runs.
SLICE = 0.005
#: RSS readings kept for the trend (one per memory/stacks/info request).
READINGS = 64

_readings: collections.deque[tuple[float, int]] = collections.deque(maxlen=READINGS)
_readings_lock = threading.Lock()

# ``type``'s own C slots: a metaclass cannot override them.
_FLAGS = type.__dict__["__flags__"].__get__
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (``class`` statement)
_OBJECT_SIZEOF = object.__sizeof__


# -- RSS and its trend ---------------------------------------------------------------------

def read_rss() -> tuple[int | None, int | None]:
    """(RSS now, peak RSS) in bytes, from /proc/self/status (psutil elsewhere)."""
    try:
        with open("/proc/self/status", "rb") as f:
            status = f.read()
    except OSError:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss), None
        except Exception:
            return None, None
    found: dict[bytes, int] = {}
    for line in status.splitlines():
        name, _, value = line.partition(b":")
        if name in (b"VmRSS", b"VmHWM"):
            parts = value.split()
            if parts and parts[0].isdigit():
                found[name] = int(parts[0]) * 1024
    return found.get(b"VmRSS"), found.get(b"VmHWM")


def note_rss() -> tuple[int | None, int | None]:
    """Take one RSS reading for the trend (memory, stacks and info requests call this:
    no thread of ours wakes up to take them)."""
    rss, peak = read_rss()
    if rss is not None:
        with _readings_lock:
            _readings.append((time.time(), rss))
    return rss, peak


def trend() -> dict[str, Any]:
    """The change of RSS per minute over the readings kept."""
    with _readings_lock:
        kept = list(_readings)
    if len(kept) < 2 or kept[-1][0] - kept[0][0] <= 0:
        return {"readings": len(kept), "note": "first reading"}
    (t0, r0), (t1, r1) = kept[0], kept[-1]
    return {"readings": len(kept), "span_s": round(t1 - t0, 3),
            "since": t0, "bytes_change": r1 - r0,
            "bytes_per_min": round((r1 - r0) * 60.0 / (t1 - t0))}


# -- the collector ---------------------------------------------------------------------------

def gc_facts() -> dict[str, Any]:
    garbage = gc.garbage  # the host may have replaced it: only a real list is measured
    stats = gc.get_stats()
    return {
        "enabled": gc.isenabled(),
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "generations": [{"collections": s.get("collections"), "collected": s.get("collected"),
                         "uncollectable": s.get("uncollectable")} for s in stats],
        "garbage": list.__len__(garbage) if type(garbage) is list else None,
    }


def tracemalloc_facts() -> dict[str, Any]:
    import _tracemalloc  # the C module: tracemalloc.py would bring pickle along

    tracing = bool(_tracemalloc.is_tracing())
    facts: dict[str, Any] = {"tracing": tracing}
    if tracing:
        facts["traced_bytes"], facts["traced_peak_bytes"] = _tracemalloc.get_traced_memory()
    return facts


# -- counting object types -------------------------------------------------------------------

def _sizer(cls: type) -> Callable[[Any], int]:
    """How to size instances of ``cls`` without running the host's code: the ``__sizeof__``
    of the nearest static (C) type of ``builtins`` on its MRO, when that is C code."""
    for klass in mro(cls):
        if _FLAGS(klass) & _HEAPTYPE or type_module(klass) != "builtins":
            continue
        method = namespace_get(klass, "__sizeof__")
        kind = type(method)
        if kind is types.MethodDescriptorType or kind is types.WrapperDescriptorType:
            return method  # type: ignore[no-any-return]
        if method is not MISSING:
            break
    return _OBJECT_SIZEOF


class _Tally:
    """Counts and sizes per type, keyed by the type's id (a class is never hashed)."""

    def __init__(self) -> None:
        #: id(type) -> [count, size, sizer, type]
        self.rows: dict[int, list[Any]] = {}

    def add(self, obj: Any) -> None:
        cls = type(obj)
        row = self.rows.get(id(cls))
        if row is None:
            row = self.rows[id(cls)] = [0, 0, _sizer(cls), cls]
        row[0] += 1
        try:
            size = row[2](obj)
        except Exception:  # a C __sizeof__ refusing an odd object: counted, not sized
            size = 0
        row[1] += size

    def top(self, column: int, n: int, scale: int) -> list[dict[str, Any]]:
        rows = sorted(self.rows.values(), key=lambda row: row[column], reverse=True)[:n]
        return [{"type": _type_label(row[3]), "count": row[0] * scale,
                 "size": row[1] * scale} for row in rows]


def _type_label(cls: type) -> str:
    if type_module(cls) == "builtins":
        return type_qualname(cls)
    return qualified_name(cls)


def count_objects(top: int, deep: bool) -> dict[str, Any]:
    """The top types by count and by shallow size (see the module's docstring)."""
    started = time.perf_counter()
    budget = DEEP_BUDGET if deep else BUDGET
    tally = _Tally()
    seen: set[int] = set()  # ids of the untracked objects counted (each once)
    # The one list of every tracked container (8 bytes each): its length sets the stride.
    objects = gc.get_objects()
    own = {id(objects), id(tally), id(tally.rows), id(seen)}
    total = len(objects)
    stride = 1 if deep else max(1, -(-total // SAMPLE))
    examined = untracked = 0
    worked = 0.0
    complete = True
    batch: list[Any] = []
    obj: Any = None
    slice_start = time.perf_counter()
    try:
        for index in range(0, total, stride):
            obj = objects[index]
            if id(obj) in own:
                continue
            tally.add(obj)
            examined += 1
            batch.append(obj)
            if len(batch) >= 256:
                untracked += _below(batch, tally, seen, deep)
                batch.clear()
                now = time.perf_counter()
                if now - slice_start >= SLICE:
                    worked += now - slice_start
                    if worked > budget:
                        complete = False
                        break
                    # Paced: the host's threads get the GIL as long as we held it.
                    time.sleep(now - slice_start)
                    slice_start = time.perf_counter()
        if complete and batch:
            untracked += _below(batch, tally, seen, deep)
        worked += time.perf_counter() - slice_start
    finally:
        batch.clear()
        del objects, obj  # the host's objects are not kept alive a moment longer
        seen.clear()
    return {
        "mode": "deep" if deep else ("full" if stride == 1 else "sampled"),
        "tracked": total, "examined": examined, "stride": stride,
        "untracked_examined": untracked,
        "complete": complete and (deep or untracked < REFERENTS),
        "elapsed_s": round(time.perf_counter() - started, 4), "work_s": round(worked, 4),
        "by_count": tally.top(0, top, stride),
        "by_size": tally.top(1, top, stride),
    }


def _below(batch: list[Any], tally: _Tally, seen: set[int], deep: bool) -> int:
    """Count the untracked objects ``batch`` refers to (each once); returns how many."""
    if not deep and len(seen) >= REFERENTS:
        return 0
    found = 0
    is_tracked = gc.is_tracked
    for obj in gc.get_referents(*batch):
        if is_tracked(obj):
            continue
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        tally.add(obj)
        found += 1
        if not deep and len(seen) >= REFERENTS:
            break
    return found


# -- the one-shot request --------------------------------------------------------------------

def _int_arg(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return value


def memory(desk: Any, ctx: Any) -> dict[str, Any]:
    """RSS, its trend, the collector, and the top types (``deep``: every object)."""
    deep = ctx.args.get("deep", False)
    if type(deep) is not bool:
        raise BadRequest("deep must be true or false")
    top = _int_arg(ctx.args, "top", 20, 1, 200)
    rss, peak = note_rss()
    return {
        "pid": os.getpid(), "python": sys.version.split()[0],
        "rss_bytes": rss, "peak_rss_bytes": peak, "trend": trend(),
        "gc": gc_facts(), "tracemalloc": tracemalloc_facts(),
        "objects": count_objects(top, deep),
    }


# -- the tracing session ---------------------------------------------------------------------

class MemorySession(Session):
    """tracemalloc for ``seconds``, then one ``memory`` event with the sites that grew."""

    mode = "memory"
    after_gone = "tracemalloc is stopped"

    def __init__(self, key_id: str, key_name: str, *, heartbeat: float, seconds: float,
                 top: int, frames: int) -> None:
        super().__init__(key_id, key_name, heartbeat=heartbeat)
        self.seconds = seconds
        self.top = top
        self.frames = frames
        self.started_tracing = False  # we started tracemalloc (and so must stop it)
        self.host_tracing = False
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        import tracemalloc

        self.host_tracing = tracemalloc.is_tracing()
        if not self.host_tracing:
            tracemalloc.start(self.frames)
            self.started_tracing = True
        from prodbug.agent.dap import untraced

        untraced(threading.Thread(target=self._run, name="prodbug-memory",
                                  daemon=True)).start()

    def _stop_tracing(self) -> None:
        with self._lock:
            if not self.started_tracing:
                return
            self.started_tracing = False
            import tracemalloc

            tracemalloc.stop()

    def on_end(self) -> None:
        # At once, from whatever thread ends the session: the host stops paying now.
        try:
            self._stop_tracing()
        except Exception:
            log.exception("prodbug memory: stopping tracemalloc failed")

    def _run(self) -> None:
        try:
            import tracemalloc

            first = tracemalloc.take_snapshot()
            if self.ended.wait(self.seconds):
                return
            second = tracemalloc.take_snapshot()
            limit = tracemalloc.get_traceback_limit()
            self._stop_tracing()
            data = self._compare(first, second, limit)
            with self._lock:
                self._events.append(("memory", data))
            self.end(f"done: traced {self.seconds:g}s"
                     + ("" if self.host_tracing else "; tracemalloc stopped"))
        except Exception as exc:
            if self.ended.is_set():  # ended meanwhile: tracemalloc stopped under us
                return
            log.exception("prodbug memory: tracing failed")
            self.end(f"failed: {type(exc).__name__}: {exc}")

    def _compare(self, first: Any, second: Any, limit: int) -> dict[str, Any]:
        import tracemalloc

        # The agent's own allocations (any frame in prodbug's package: the host's code never
        # runs below ours, `prodbug run` execs it) are left out. With one frame a few
        # bytes of the agent's json may still show (the frame is json's).
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        filters = [tracemalloc.Filter(False, tracemalloc.__file__),
                   tracemalloc.Filter(False, os.path.join(package, "*"), all_frames=True),
                   tracemalloc.Filter(False, "<unknown>")]
        key = "lineno" if self.frames == 1 else "traceback"
        diffs = second.filter_traces(filters).compare_to(first.filter_traces(filters), key)
        growing = [d for d in diffs if d.size_diff > 0][:self.top]
        return {
            "seconds": self.seconds, "frames": min(self.frames, limit),
            "host_tracing": self.host_tracing, "key": key,
            "sites": [{
                # Innermost (the allocating line) first, as stacks are.
                "frames": [{"filename": f.filename, "lineno": f.lineno}
                           for f in reversed(list(d.traceback))],
                "size_diff": d.size_diff, "count_diff": d.count_diff,
                "size": d.size, "count": d.count} for d in growing],
        }

    def take_events(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "tracing_s": self.seconds,
                "tracemalloc": "the host's" if self.host_tracing else (
                    "started by this session" if self.started_tracing else "stopped")}


def memory_open(desk: Any, ctx: Any) -> dict[str, Any]:
    """Open a tracing session: ``trace`` seconds (0.1-120), ``top`` sites, ``frames``."""
    seconds = number_arg(ctx.args, "trace", None, 0.1, 120)
    top = _int_arg(ctx.args, "top", 20, 1, 200)
    frames = _int_arg(ctx.args, "frames", 1, 1, 10)
    desk.check_free(exclusive=False)
    for other in desk.sessions.values():
        if type(other) is MemorySession and not other.ended.is_set():
            raise RequestError(f"busy: a memory trace by {other.key_name} is running in this "
                               f"process (tracemalloc is one per process)", "busy")
    session = MemorySession(ctx.key.id, ctx.key.name, heartbeat=desk.config.session_heartbeat,
                            seconds=float(seconds), top=top, frames=frames)
    desk.open(session, ctx)
    try:
        session.start()
    except Exception:
        session.end("failed to start tracemalloc")
        raise
    return {**session.facts(), "heartbeat": desk.config.session_heartbeat,
            "host_tracing": session.host_tracing}
