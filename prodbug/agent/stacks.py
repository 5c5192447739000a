"""The ``stacks`` command: every thread's frames, CPU and state, collected in-process."""

from __future__ import annotations

import linecache
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

import psutil

__all__ = ["MAX_DEPTH", "collect_stacks", "process_header", "thread_cpu_times"]

#: Frames kept per thread (innermost first); deeper stacks are marked truncated.
MAX_DEPTH = 200
_MAX_LINE = 200
#: A thread above this share of one CPU over the sample is "running".
_RUNNING_PERCENT = 10.0
_PROC_STATES = {"R": "running", "S": "waiting", "D": "io-wait", "T": "stopped", "t": "stopped"}


def thread_cpu_times() -> dict[int, float]:
    """CPU seconds (user + system) per native thread id of this process."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    except (psutil.Error, OSError):
        return {}


def _proc_state(native_id: int) -> str:
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            data = f.read(512)
        return _PROC_STATES.get(chr(data[data.rindex(b")") + 2]), "unknown")
    except (OSError, ValueError, IndexError):
        return "unknown"


def _function_name(frame: FrameType) -> str:
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def _frames(frame: FrameType | None) -> tuple[list[dict[str, Any]], bool]:
    out: list[dict[str, Any]] = []
    while frame is not None and len(out) < MAX_DEPTH:
        filename = frame.f_code.co_filename
        lineno = frame.f_lineno or 0
        try:
            line = linecache.getline(filename, lineno).strip()[:_MAX_LINE]
        except Exception:  # a broken loader must not break the dump
            line = ""
        function = _function_name(frame)
        out.append({"filename": filename, "lineno": lineno, "function": function, "line": line})
        frame = frame.f_back
    return out, frame is not None


def process_header() -> dict[str, Any]:
    """Who this process is: the fields every per-process result starts with."""
    return {
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "executable": sys.executable,
    }


def collect_stacks(args: dict[str, Any], skip_ident: int | None) -> dict[str, Any]:
    """Every thread but ``skip_ident`` (the agent's own), frames innermost first.

    ``args["cpu_interval"]`` (seconds, default 0.1, at most 1) is how long CPU use
    is sampled; 0 skips sampling and leaves ``cpu_percent`` null.
    """
    interval = args.get("cpu_interval", 0.1)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool):
        raise ValueError("cpu_interval must be a number of seconds")
    interval = min(max(float(interval), 0.0), 1.0)

    before: dict[int, float] = {}
    if interval:
        before = thread_cpu_times()
        started = time.monotonic()
        time.sleep(interval)  # releases the GIL: busy threads get to show their CPU use
        after = thread_cpu_times()
        elapsed = time.monotonic() - started
    by_ident = {t.ident: t for t in threading.enumerate()}
    current = sys._current_frames()
    threads: list[dict[str, Any]] = []
    try:
        for ident, frame in current.items():
            if ident == skip_ident:
                continue
            thread = by_ident.get(ident)
            native_id = getattr(thread, "native_id", None) if thread is not None else None
            cpu: float | None = None
            if interval and native_id in before and native_id in after:
                cpu = round(100.0 * (after[native_id] - before[native_id]) / elapsed, 1)
            if cpu is not None:
                state = "running" if cpu >= _RUNNING_PERCENT else "waiting"
            else:
                state = _proc_state(native_id) if native_id is not None else "unknown"
            frames, truncated = _frames(frame)
            threads.append(
                {
                    "name": thread.name if thread is not None else f"<unregistered {ident}>",
                    "ident": ident,
                    "native_id": native_id,
                    "daemon": thread.daemon if thread is not None else None,
                    "cpu_percent": cpu,
                    "state": state,
                    "frames": frames,
                    "truncated": truncated,
                }
            )
    finally:
        del current  # frames keep their locals alive: let them go now
    main = threading.main_thread().ident
    threads.sort(key=lambda t: (t["ident"] != main, t["name"], t["ident"]))
    return {**process_header(), "threads": threads, "tasks": []}
