"""The sampling profiler: ``profile.open`` (observer role), a session that looks and ends.

One daemon thread of ours ("prodbug-profiler") reads ``sys._current_frames()`` at the
asked rate and walks each chosen thread's frames: C attribute reads only (``f_code``,
``f_lineno``, ``f_back``), nothing of the host's runs, and the GIL is held no longer than
one sample's walk. A stack is a tuple of ints (``id`` of each code object, its line), the
code objects kept alive in one dict so that no id is reused meanwhile; once a stack has
been seen, another sample of it only increments its counter. Memory is bounded: at most
``MAX_STACKS`` distinct stacks (the rest count as "(other)"), ``MAX_DEPTH`` frames each.

When the time is up (or the session ends: the operator closed it, or went away) the
sampler stops at once; the counts go to the operator as one ``profile`` event (per thread
and merged, as collapsed stacks) unless the operator is gone, and the session ends
"done".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

from prodbug.agent.context import number_arg
from prodbug.agent.dap import is_own_thread, untraced
from prodbug.agent.session import Event, Session
from prodbug.errors import BadRequest, RequestError

__all__ = ["MAX_DEPTH", "MAX_STACKS", "ProfileSession", "profile_open"]

_log = logging.getLogger("prodbug.agent")

#: Distinct stacks kept, all threads together; samples of any further ones count as
#: "(other)".
MAX_STACKS = 20_000
#: Frames kept per stack (the innermost ones; a deeper stack's root is "(truncated)").
MAX_DEPTH = 128
#: What the one ``profile`` event may carry (collapsed-stack text, roughly), for the merged
#: stacks and for all threads' stacks each: the rest is folded into "(other)". Well under
#: the outbox's bound on what one operator may have waiting.
MAX_EVENT_TEXT = 8 << 20
#: How often the sampler looks up which thread an ident is (names change, idents are reused).
_REFRESH = 1.0

_OTHER: tuple[int, ...] = (-2, 0)
_TRUNCATED = -1
_UNSEEN = 0

#: How a thread is sampled: its key in the counts ((ident, name)) and its CPU-time clock.
_Chosen = tuple[tuple[int, str], int | None]


def _thread_clock(native_id: int | None) -> int | None:
    """The clock id of a thread's CPU time, from its kernel id (Linux's encoding of
    CPUCLOCK_SCHED per thread): reading it is one system call, and a thread that is gone
    (or of another process) gives EINVAL, never someone else's figure."""
    if native_id is None or not sys.platform.startswith("linux"):
        return None
    clock = ((~native_id) << 3) | 6
    try:
        time.clock_gettime_ns(clock)
    except (OSError, OverflowError):
        return None
    return clock


class ProfileSession(Session):
    """Samples threads' stacks for ``seconds`` at ``rate`` Hz, then sends them and ends."""

    mode = "profile"
    exclusive = False
    after_gone = "the sampler stopped"

    def __init__(self, key_id: str, key_name: str, *, heartbeat: float, seconds: float,
                 rate: float, threads: list[str] | None, idle: bool = False) -> None:
        super().__init__(key_id, key_name, heartbeat=heartbeat)
        self.seconds = seconds
        self.rate = rate
        #: None: every thread but ours; [] (``"all"``): every thread but the sampler.
        self.wanted = threads
        #: Count samples of threads that used no CPU since the previous sample too.
        self.idle = idle
        self.samples = 0
        #: CPU seconds the sampler thread used (what the profile cost the process).
        self.sampler_cpu = 0.0
        #: CPU clock -> its last reading; (ident, name) -> samples skipped as idle.
        self.cpu: dict[int, int] = {}
        self.idle_samples: dict[tuple[int, str], int] = {}
        self.started = 0.0
        self.stopped = 0.0
        #: (ident, name) -> stack key -> samples.
        self.counts: dict[tuple[int, str], dict[tuple[int, ...], int]] = {}
        self.distinct = 0
        #: id(code) -> code: keeps each code object a stack names alive (its id stays its).
        self.codes: dict[int, Any] = {}
        self._gone = False
        self._sent = False
        self._failed: str | None = None
        # Held until the session ends: the sampler waits on it between samples, so that
        # an end wakes it at once (and no lock is made per wait, as Event.wait would).
        self._stop = threading.Lock()
        self._stop.acquire()
        self._thread = untraced(threading.Thread(target=self._run, name="prodbug-profiler",
                                                 daemon=True))

    # -- the sampler thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        cpu = time.thread_time()
        try:
            self._sample_until_done()
        except Exception as exc:  # never into the host: say it, end the session
            self._failed = f"{type(exc).__name__}: {exc}"
            _log.warning("the profiler failed", exc_info=True)
        self.stopped = time.monotonic()
        self.sampler_cpu = time.thread_time() - cpu
        self.end(f"the profiler failed: {self._failed}" if self._failed else "done")

    def _sample_until_done(self) -> None:
        interval = 1.0 / self.rate
        me = threading.get_ident()
        chosen: dict[int, _Chosen | None] = {}  # ident -> how to sample it (None: not)
        refreshed = self.started = time.monotonic()
        deadline = self.started + self.seconds
        tick = self.started
        stop = self._stop
        while True:
            now = time.monotonic()
            if now - refreshed >= _REFRESH:
                # Threads come and go: forget them all (and the CPU readings of the gone).
                live = {how[1] for how in chosen.values() if how is not None}
                self.cpu = {clock: used for clock, used in self.cpu.items() if clock in live}
                chosen.clear()
                refreshed = now
            self._sample(chosen, me)
            self.samples += 1
            tick += interval
            now = time.monotonic()
            tick = max(tick, now)  # behind (a busy host): skip samples, never burst
            if tick >= deadline:
                stop.acquire(timeout=max(0.0, deadline - now))
                return
            if stop.acquire(timeout=tick - now):
                return

    def _sample(self, chosen: dict[int, _Chosen | None], me: int) -> None:
        """One sample of every chosen thread (the frames are let go on return: they keep
        the host's locals alive)."""
        codes = self.codes
        for ident, top in sys._current_frames().items():
            how = chosen.get(ident, _UNSEEN)
            if how is _UNSEEN:
                how = chosen[ident] = self._choose(ident, me)
            if how is None or isinstance(how, int):
                continue
            key, clock = how
            if clock is not None and not self.idle:
                # The thread's CPU time since the last sample: none means it waited (sleep,
                # I/O, a lock) the whole time, and the sample is counted as idle.
                try:
                    used = time.clock_gettime_ns(clock)
                except OSError:  # the thread is gone
                    continue
                before = self.cpu.get(clock)
                self.cpu[clock] = used
                if before is None or used == before:  # no baseline yet counts as idle
                    self.idle_samples[key] = self.idle_samples.get(key, 0) + 1
                    continue
            stacks = self.counts.get(key)
            if stacks is None:
                stacks = self.counts[key] = {}
            walk: list[int] = []
            frame: FrameType | None = top
            while frame is not None:
                if len(walk) == 2 * MAX_DEPTH:
                    walk.append(_TRUNCATED)
                    walk.append(0)
                    break
                code = frame.f_code
                cid = id(code)
                if cid not in codes:
                    codes[cid] = code
                walk.append(cid)
                walk.append(frame.f_lineno or 0)
                frame = frame.f_back
            stack = tuple(walk)
            seen = stacks.get(stack)
            if seen is not None:
                stacks[stack] = seen + 1
            elif self.distinct < MAX_STACKS:
                stacks[stack] = 1
                self.distinct += 1
            else:
                stacks[_OTHER] = stacks.get(_OTHER, 0) + 1

    def _choose(self, ident: int, me: int) -> _Chosen | None:
        """How to sample thread ``ident`` (its key and CPU clock), or None: not at all."""
        if ident == me:
            return None
        # A plain dict read: no lock, no host code.
        thread = getattr(threading, "_active", {}).get(ident)
        name = ""
        native = None
        if thread is not None:
            fields = vars(thread)
            raw = dict.get(fields, "_name")
            name = raw if type(raw) is str else ""
            raw_native = dict.get(fields, "_native_id")
            native = raw_native if type(raw_native) is int and raw_native > 0 else None
        if not name:
            name = f"thread-{ident}"
        if self.wanted is None:
            if thread is not None and is_own_thread(thread):
                return None
        elif self.wanted and not _matches(self.wanted, name, ident, native):
            return None
        return ((ident, name), _thread_clock(native))

    # -- the agent thread ----------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if not self.ended.is_set() and now - self.last_seen > self.heartbeat:
            self._gone = True
        super().check_timeouts(now)

    def on_end(self) -> None:
        # Wakes the sampler, which stops before its next sample; never blocks.
        with contextlib.suppress(RuntimeError):  # released already
            self._stop.release()

    def take_events(self) -> list[Event]:
        if not self.ended.is_set() or self._sent:
            return []
        self._sent = True
        # The sampler stops within one sample of the end; its counts are then still.
        self._thread.join(2.0)
        if self._thread.is_alive() or self._gone or self.samples == 0:
            return []
        try:
            return [("profile", self.result())]
        except Exception:
            _log.warning("the profile could not be sent", exc_info=True)
            return []

    def finish(self) -> None:
        # What the profile held (code objects among them) is let go with the session.
        self.counts = {}
        self.codes = {}

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "seconds": self.seconds, "rate": self.rate,
                "idle": self.idle,
                "samples": self.samples,
                "threads": "all" if self.wanted == [] else (self.wanted or "all but prodbug's")}

    # -- the result --------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """The profile as the ``profile`` event carries it."""
        names: dict[int, str] = {}
        for cid, code in self.codes.items():
            qualname = getattr(code, "co_qualname", None)
            function = qualname if type(qualname) is str else code.co_name
            names[cid] = f"{_clean(code.co_filename)}:{_clean(function)}"
        names[_TRUNCATED] = "(truncated)"
        names[_OTHER[0]] = "(other)"

        def text(stack: tuple[int, ...]) -> str:
            # Collapsed order: the root first, the innermost frame last.
            parts = []
            for i in range(len(stack) - 2, -1, -2):
                cid, line = stack[i], stack[i + 1]
                parts.append(names[cid] if cid < 0 else f"{names[cid]}:{line}")
            return ";".join(parts)

        merged: dict[tuple[int, ...], int] = {}
        threads = []
        thread_budget = [MAX_EVENT_TEXT]
        keys = set(self.counts) | set(self.idle_samples)
        for ident, name in sorted(keys, key=lambda k: -sum(self.counts.get(k, {}).values())):
            stacks = self.counts.get((ident, name), {})
            for stack, count in stacks.items():
                merged[stack] = merged.get(stack, 0) + count
            threads.append({"name": name, "ident": ident, "samples": sum(stacks.values()),
                            "idle": self.idle_samples.get((ident, name), 0),
                            "stacks": _listed(stacks, text, thread_budget)})
        duration = max(self.stopped - self.started, 1e-9)
        return {"pid": os.getpid(), "python": sys.version.split()[0],
                "samples": self.samples, "rate": self.rate, "idle": self.idle,
                "achieved_rate": round(self.samples / duration, 2),
                "duration": round(duration, 3), "sampler_cpu": round(self.sampler_cpu, 4),
                "distinct_stacks": self.distinct,
                "max_stacks": MAX_STACKS, "max_depth": MAX_DEPTH,
                "merged": _listed(merged, text, [MAX_EVENT_TEXT]), "threads": threads}


def _listed(stacks: dict[tuple[int, ...], int], text: Any,
            budget: list[int]) -> list[dict[str, Any]]:
    """``[{"stack", "count"}]``, the most sampled first, within ``budget`` characters (the
    rest folded into "(other)")."""
    out: list[dict[str, Any]] = []
    other = 0
    for stack, count in sorted(stacks.items(), key=lambda item: -item[1]):
        if stack == _OTHER:
            other += count
            continue
        if budget[0] <= 0:
            other += count
            continue
        line = text(stack)
        budget[0] -= len(line) + 16
        out.append({"stack": line, "count": count})
    if other:
        out.append({"stack": "(other)", "count": other})
    return out


def _clean(name: str) -> str:
    """A name as collapsed stacks can carry it: no separators, no line breaks."""
    if type(name) is not str:
        return "?"
    return name.replace(";", ",").replace("\n", " ").replace("\r", " ")


def _matches(wanted: list[str], name: str, ident: int, native: int | None) -> bool:
    return any(w == name or w == str(ident) or (native is not None and w == str(native))
               for w in wanted)


def _threads_arg(value: Any) -> list[str] | None:
    if value is None:
        return None
    if value == "all":
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value or len(value) > 64
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                       and len(str(v)) <= 200 for v in value)):
        raise BadRequest('threads must be "all", or a thread name or id, or a list of '
                         "(at most 64) of them")
    return [str(v) for v in value]


def profile_open(desk: Any, ctx: Any) -> dict[str, Any]:
    """Start sampling: ``seconds`` (0.1-300), ``rate`` (1-1000 Hz, default 100),
    ``threads`` ("all", or names/ids; default every thread but prodbug's own)."""
    args = ctx.args
    seconds = number_arg(args, "seconds", None, 0.1, 300)
    rate = number_arg(args, "rate", 100, 1, 1000)
    threads = _threads_arg(args.get("threads"))
    idle = args.get("idle", False)
    if not isinstance(idle, bool):
        raise BadRequest("idle must be true or false")
    if threads:
        known = [t for t in threading.enumerate() if t is not threading.current_thread()]
        found = False
        for thread in known:
            fields = vars(thread)
            name, ident = dict.get(fields, "_name"), dict.get(fields, "_ident")
            native = dict.get(fields, "_native_id")
            if _matches(threads, name if type(name) is str else "",
                        ident if type(ident) is int else -1,
                        native if type(native) is int else None):
                found = True
                break
        if not found:
            raise RequestError(f"no thread named {', '.join(threads)} in this process",
                               "not_found")
    desk.check_free(exclusive=False)
    session = ProfileSession(ctx.key.id, ctx.key.name,
                             heartbeat=desk.config.session_heartbeat, seconds=seconds,
                             rate=rate, threads=threads, idle=idle)
    desk.open(session, ctx)
    session.start()
    return {**session.facts(), "heartbeat": desk.config.session_heartbeat,
            "pid": os.getpid(), "python": sys.version.split()[0]}
