"""The ``stacks`` command: every thread's frames, CPU and state, collected in-process."""

from __future__ import annotations

import linecache
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

from prodbug.agent.procfs import read_task_stats

__all__ = ["MAX_DEPTH", "collect_stacks", "process_header"]

#: Frames kept per thread (innermost first); deeper stacks are marked truncated.
MAX_DEPTH = 200
_MAX_LINE = 200
#: A thread above this share of one CPU over the sample is "running".
_RUNNING_PERCENT = 10.0
_PROC_STATES = {"R": "running", "S": "waiting", "D": "io-wait", "T": "stopped", "t": "stopped"}


def _native_ids() -> dict[int, int]:
    """threading ident -> native thread id, for every thread ``threading`` knows."""
    out = {}
    for thread in threading.enumerate():
        native = getattr(thread, "native_id", None)
        if thread.ident is not None and native is not None:
            out[thread.ident] = native
    return out


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

    natives = _native_ids()
    before = read_task_stats(natives.values()) if interval else {}
    started = time.monotonic()
    if interval:
        time.sleep(interval)  # releases the GIL: busy threads get to show their CPU use
    after = read_task_stats(natives.values())
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
            state = "unknown"
            if native_id in after:
                state = _PROC_STATES.get(after[native_id][0], "unknown")
                if native_id in before:
                    used = after[native_id][1] - before[native_id][1]
                    cpu = round(100.0 * used / elapsed, 1)
                    state = "running" if cpu >= _RUNNING_PERCENT else "waiting"
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
