"""The ``stacks`` command: every thread and asyncio task, and why each one waits.

Collected in-process from ``sys._current_frames()``: frames innermost first with source
lines; per-thread CPU use and scheduler state from ``/proc`` (CPU over the time since the
previous dump, so that a dump needs no wait; see ``CpuReadings``); what each waiting thread
waits on (``waits``); every asyncio task (``tasks``); identical stacks grouped; and, on
request, locals rendered without running host code (``saferepr``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

from prodbug.agent.introspect import exact_int, exact_str, frame_locals, instance_dict, source_line
from prodbug.agent.procfs import TaskStat, boot_clock, read_cpu_times, read_task_stats
from prodbug.agent.saferepr import SafeRepr
from prodbug.agent.tasks import collect_tasks
from prodbug.agent.waits import analyze
from prodbug.errors import BadRequest, Forbidden
from prodbug.grouping import group_tasks, group_threads

__all__ = ["LINE_CUT", "MAX_DEPTH", "CpuReadings", "StateHistory", "collect_stacks",
           "process_header"]

#: Frames kept per thread (innermost first); deeper stacks are marked truncated.
MAX_DEPTH = 200
_MAX_LINE = 200
#: The end of a source line cut to _MAX_LINE characters.
LINE_CUT = "..."
_MAX_LOCALS = 50  # names per frame
#: A thread above this share of one CPU over the window is "running".
_RUNNING_PERCENT = 10.0
#: CPU use is taken over the time since an earlier dump's reading when that is at least
#: _MIN_WINDOW and at most _MAX_WINDOW seconds ago; else over a sample of _SAMPLE seconds.
#: 50 ms: on a busy 2-core machine (other processes spinning beside the host), shorter
#: samples now and then showed a spinning host thread below the "running" mark.
_SAMPLE = 0.05
_MIN_WINDOW = _SAMPLE
_MAX_WINDOW = 60.0
_PROC_STATES = {"R": "running", "S": "waiting", "D": "io-wait", "T": "stopped", "t": "stopped"}


class StateHistory:
    """Since when each thread has been in its current state, as seen by successive dumps.

    A thread's first dump cannot know how long it has waited; from the second dump on, an
    unchanged state (same wait, same innermost frame) is reported as lasting at least
    since the dump that first saw it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, float]] = {}

    def since(self, now: float, signatures: dict[int, Any]) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        fresh: dict[int, tuple[Any, float]] = {}
        for ident, signature in signatures.items():
            old = self._seen.get(ident)
            if old is not None and old[0] == signature:
                fresh[ident] = old
                out[ident] = round(now - old[1], 3)
            else:
                fresh[ident] = (signature, now)
                out[ident] = None
        self._seen = fresh  # threads that are gone are forgotten: bounded by live threads
        return out


class CpuReadings:
    """CPU seconds of each thread as earlier dumps read them: the start of the next dump's
    window. Kept by the dumps themselves (nothing wakes up in between); at most two
    readings, at least _MIN_WINDOW apart, so that back-to-back dumps still get a window of
    at least that; a reading keeps only threads that were alive at the next one."""

    def __init__(self) -> None:
        self._readings: list[tuple[float, dict[int, float]]] = []

    def clear(self) -> None:
        self._readings = []

    def base(self, now: float) -> tuple[float, dict[int, float]] | None:
        """The newest reading at least _MIN_WINDOW old; None when there is none, or when
        it is older than _MAX_WINDOW (a figure averaged over minutes would not say what
        the threads do now)."""
        for at, cpu in reversed(self._readings):
            if now - at >= _MIN_WINDOW:
                return (at, cpu) if now - at <= _MAX_WINDOW else None
        return None

    def add(self, at: float, cpu: dict[int, float]) -> None:
        if self._readings and at - self._readings[-1][0] < _MIN_WINDOW:
            return  # the newer reading would make the next window too short
        kept = [(t, {tid: v for tid, v in old.items() if tid in cpu})
                for t, old in self._readings[-1:]]
        self._readings = [*kept, (at, cpu)]


_READINGS = CpuReadings()


def _function_name(frame: FrameType) -> str:
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def frame_dict(frame: FrameType) -> dict[str, Any]:
    """One frame as the wire carries it."""
    filename = frame.f_code.co_filename
    lineno = frame.f_lineno or 0
    line = source_line(filename, lineno).strip()
    if len(line) > _MAX_LINE:
        line = line[: _MAX_LINE - len(LINE_CUT)] + LINE_CUT
    return {"filename": filename, "lineno": lineno, "function": _function_name(frame),
            "line": line}


def _frame_list(frame: FrameType | None) -> tuple[list[FrameType], bool]:
    out: list[FrameType] = []
    while frame is not None and len(out) < MAX_DEPTH:
        out.append(frame)
        frame = frame.f_back
    return out, frame is not None


def _locals(frame: FrameType, fmt: SafeRepr) -> dict[str, str] | None:
    if fmt.exhausted:
        return None
    names = frame_locals(frame, _MAX_LOCALS)
    if names is None:
        return None
    return {fmt.name(name): fmt.value(name, value) for name, value in names}


class _ThreadFacts:
    """A ``threading.Thread``'s name, ident, native id and daemon flag, read from its own
    fields: a subclass may override the properties (``name``, ``ident`` ...) with code."""

    def __init__(self, thread: Any) -> None:
        fields = instance_dict(thread) or {}  # looked up once: a dump reads every thread
        self.name = exact_str(dict.get(fields, "_name"))
        self.ident = exact_int(dict.get(fields, "_ident"))
        self.native_id = exact_int(dict.get(fields, "_native_id"))
        daemon = dict.get(fields, "_daemonic")
        self.daemon = daemon if type(daemon) is bool else None


#: The thread that forked this process, and its id in the kernel now: before 3.13 its
#: ``threading`` object keeps the parent's native id after fork (a gunicorn worker's main
#: thread would show the master's id, and no CPU or state).
_FORKED: dict[int, int] = {}


def _note_fork() -> None:
    _READINGS.clear()  # the parent's threads, not ours
    _FORKED.clear()
    _FORKED[threading.get_ident()] = threading.get_native_id()


os.register_at_fork(after_in_child=_note_fork)


def _threads() -> dict[int, _ThreadFacts]:
    out = {}
    for thread in threading.enumerate():
        facts = _ThreadFacts(thread)
        if facts.ident is not None:
            out[facts.ident] = facts
    return out


def process_header() -> dict[str, Any]:
    """Who this process is: the fields every per-process result starts with."""
    return {
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "executable": sys.executable,
    }


class _Cpu:
    """Per-thread CPU share and state over one window."""

    def __init__(self) -> None:
        self.percent: dict[int, float | None] = {}
        self.state: dict[int, str] = {}
        #: Threads that started after the window did: their figure covers their own life.
        self.own_window: dict[int, float] = {}


class _Window:
    """CPU seconds per native thread id at the window's start (None: not measured) and at
    its end, how long it lasted, and its kind: ``since_last``, ``sample`` or ``none``."""

    def __init__(self, before: dict[int, float] | None, after: dict[int, float],
                 seconds: float, kind: str) -> None:
        self.before, self.after, self.seconds, self.kind = before, after, seconds, kind


def _measure_cpu(args: dict[str, Any], natives: dict[int, int]) -> _Window:
    explicit = "cpu_interval" in args
    interval = _number(args, "cpu_interval", 0.0, 0.0, 1.0)
    base = None if explicit else _READINGS.base(time.monotonic())
    if base is not None:
        after = read_cpu_times(natives.values())
        now = time.monotonic()
        _READINGS.add(now, after)
        return _Window(base[1], after, now - base[0], "since_last")
    if not explicit:
        interval = _SAMPLE  # no usable earlier reading: a short sample instead
    if not interval:
        after = read_cpu_times(natives.values())
        _READINGS.add(time.monotonic(), after)
        return _Window(None, after, 0.0, "none")
    before = read_cpu_times(natives.values())
    started = time.monotonic()
    _READINGS.add(started, before)
    time.sleep(interval)  # releases the GIL: busy threads get to show their CPU use
    after = read_cpu_times(natives.values())
    now = time.monotonic()
    _READINGS.add(now, after)
    return _Window(before, after, now - started, "sample")


def _cpu_and_state(stacks: dict[int, list[FrameType]], natives: dict[int, int],
                   window: _Window) -> _Cpu:
    """CPU share over the window where both ends are known; for the other threads (all of
    them without a window) the kernel's state letter, and for a thread that started after
    the window did, its CPU over its life so far."""
    out = _Cpu()
    before, after = window.before, window.after
    measured = {ident: native for ident, native in natives.items()
                if before is not None and native in before and native in after}
    # /proc is read only for the threads the window does not cover (a file each).
    stats: dict[int, TaskStat] = read_task_stats(
        native for ident, native in natives.items() if ident not in measured)
    booted = boot_clock() if stats and before is not None else None
    for ident in stacks:
        out.percent[ident] = None
        out.state[ident] = "unknown"
        native = natives.get(ident)
        if native is None:
            continue
        seconds = window.seconds
        if ident in measured and before is not None:
            cpu_s = after[native] - before[native]
        elif native in stats:
            letter, _, started = stats[native]
            out.state[ident] = _PROC_STATES.get(letter, "unknown")
            if started is None or booted is None or native not in after \
                    or not _MIN_WINDOW <= booted - started <= _MAX_WINDOW:
                continue  # no window, or too young to measure: the state letter stands
            seconds = booted - started  # first seen: its CPU over its life so far
            cpu_s = after[native]
            out.own_window[ident] = round(seconds, 3)
        else:
            continue  # exited meanwhile
        percent = round(100.0 * max(cpu_s, 0.0) / seconds, 1)
        out.percent[ident] = percent
        out.state[ident] = "running" if percent >= _RUNNING_PERCENT else "waiting"
    return out


def _number(args: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = args.get(name, default)
    if type(value) not in (int, float):  # bool is not a number here
        raise BadRequest(f"{name} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise BadRequest(f"{name} is out of range ({low:g} to {high:g})") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be a finite number")
    return min(max(number, low), high)


def collect_stacks(args: dict[str, Any], agent_ident: int | None, *,  # noqa: PLR0915
                   history: StateHistory | None = None, may_unredact: bool = False,
                   hang_dump: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every thread (the agent's own marked ``"agent": true``) and every asyncio task.

    ``args``: ``cpu_interval`` (seconds, at most 1: sample CPU use that long; 0: no CPU
    figures; absent: over the time since the previous dump, else a short sample),
    ``locals`` (how many innermost frames per thread get locals; default 0, at most 5),
    ``redact`` (default true; false needs ``may_unredact``).
    """
    locals_depth = int(_number(args, "locals", 0, 0, 5))
    redact = args.get("redact", True)
    if not isinstance(redact, bool):
        raise BadRequest("redact must be true or false")
    if not redact and not may_unredact:
        raise Forbidden("unredacted locals need the debugger role", needed_role="debugger")

    threads_by_ident = _threads()
    natives: dict[int, int] = {}
    for ident, t in threads_by_ident.items():
        native = _FORKED.get(ident, t.native_id)
        if native is not None:
            natives[ident] = native
    window = _measure_cpu(args, natives)
    if window.kind == "sample":  # threads started during the sample are picked up too
        threads_by_ident = _threads()

    current = sys._current_frames()
    stacks: dict[int, list[FrameType]] = {}
    try:
        names = {ident: t.name or "?" for ident, t in threads_by_ident.items()}
        truncated: dict[int, bool] = {}
        for ident, frame in current.items():
            stacks[ident], truncated[ident] = _frame_list(frame)
        measured = _cpu_and_state(stacks, natives, window)
        cpu, state = measured.percent, measured.state
        running = {i for i, s in state.items() if s == "running"}
        if agent_ident is not None:
            running.add(agent_ident)
        analysis = analyze({i: f for i, f in stacks.items() if i != agent_ident}, running, names)
        tasks = collect_tasks(stacks, names, frame_dict)
        fmt = SafeRepr(redact=redact)
        signatures = {
            ident: (state[ident], (analysis.waits.get(ident) or {}).get("what"),
                    id(frames[0].f_code) if frames else None,
                    frames[0].f_lineno if frames else None)
            for ident, frames in stacks.items()}
        since = history.since(time.monotonic(), signatures) if history else {}

        threads: list[dict[str, Any]] = []
        for ident, frames in stacks.items():
            thread = threads_by_ident.get(ident)
            out_frames = [frame_dict(f) for f in frames]
            if locals_depth and ident != agent_ident:
                for n, frame in enumerate(frames[:locals_depth]):
                    shown = _locals(frame, fmt)
                    if shown is not None:
                        out_frames[n]["locals"] = shown
            entry: dict[str, Any] = {
                "name": (thread.name or "?") if thread is not None else f"<unregistered {ident}>",
                "ident": ident,
                "native_id": natives.get(ident),
                "daemon": thread.daemon if thread is not None else None,
                "cpu_percent": cpu[ident],
                "state": state[ident],
                "since_s": since.get(ident),
                "wait": analysis.waits.get(ident),
                "holds": analysis.holds.get(ident, []),
                "frames": out_frames,
                "truncated": truncated[ident],
            }
            if ident in measured.own_window:
                entry["cpu_window_s"] = measured.own_window[ident]
            if ident == agent_ident:
                entry["agent"] = True
            threads.append(entry)
    finally:
        del current, stacks  # frames keep their locals alive: let them go now
    main = _ThreadFacts(threading.main_thread()).ident
    threads.sort(key=lambda t: (t["ident"] != main, t["name"], t["ident"]))
    result = {**process_header(), "threads": threads,
              "cpu_window": {"kind": window.kind, "seconds": round(window.seconds, 3)
                             if window.kind != "none" else None},
              "deadlocks": analysis.deadlocks, **tasks,
              "thread_groups": group_threads(threads),
              "task_groups": group_tasks(tasks["tasks"]),
              "locals_redacted": redact if locals_depth else None,
              "locals_truncated": fmt.exhausted}
    if hang_dump is not None:
        result["hang_dump"] = hang_dump
    return result
