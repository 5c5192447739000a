"""Every asyncio task of every event loop in the process, read from another thread.

The agent never runs code on a loop and never imports asyncio into a host that does not
use it. Tasks come from asyncio's own registry of live tasks (a WeakSet the loop thread
may change while we read: copying it is retried); await chains are followed through the
C-level ``cr_await``/``gi_yieldfrom`` links of coroutine objects, so no host code runs:
tasks, coroutines and awaited objects are recognized by exact type or MRO identity, never
``isinstance`` (a lazy proxy's ``__class__`` is host code; see ``introspect``).
A loop's thread is found from the frame of its ``run_forever`` on that thread's stack.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from types import FrameType
from typing import Any

from prodbug.agent.introspect import (
    MISSING,
    exact_str,
    frame_local,
    has_base,
    source_line,
    type_name,
    type_qualname,
)

__all__ = ["MAX_TASKS", "collect_tasks"]

MAX_TASKS = 10_000
_MAX_CHAIN = 100
_REGISTRIES = ("_scheduled_tasks", "_eager_tasks", "_all_tasks")  # 3.12+ / 3.10-3.11

#: Innermost coroutine (module file, function) -> what the task is waiting on.
_AWAITS = {
    ("locks.py", "wait"): "asyncio.Event / Condition",
    ("locks.py", "acquire"): "asyncio.Lock / Semaphore",
    ("queues.py", "get"): "asyncio.Queue.get",
    ("queues.py", "put"): "asyncio.Queue.put",
    ("tasks.py", "sleep"): "asyncio.sleep",
    ("tasks.py", "wait_for"): "asyncio.wait_for",
    ("tasks.py", "_wait"): "asyncio.wait",
    ("streams.py", "_wait_for_data"): "stream read",
    ("streams.py", "drain"): "stream write (drain)",
    ("base_events.py", "sock_recv"): "socket recv",
}


def _registered_tasks() -> list[Any]:
    module = sys.modules.get("asyncio.tasks")
    if module is None:
        return []
    registries = [getattr(module, name) for name in _REGISTRIES if hasattr(module, name)]
    for _attempt in range(20):
        try:
            found: list[Any] = []
            for registry in registries:
                found.extend(list(registry))
            return found
        except RuntimeError:  # "set changed size during iteration": the loop thread ran
            continue
    return []


def _loop_threads(stacks: dict[int, list[FrameType]]) -> dict[int, int]:
    """id(loop) -> thread ident, from ``BaseEventLoop.run_forever`` frames."""
    out = {}
    for ident, frames in stacks.items():
        for frame in frames:
            code = frame.f_code
            if code.co_name == "run_forever" and code.co_filename.endswith("base_events.py"):
                loop = frame_local(frame, "self")
                if loop is not MISSING and loop is not None:
                    out[id(loop)] = ident
                break
    return out


def _chain(coro: Any) -> tuple[list[FrameType], Any]:
    """The task's frames, innermost first, and the awaited object at the end of the chain."""
    frames: list[FrameType] = []
    obj = coro
    for _ in range(_MAX_CHAIN):
        kind = type(obj)  # these three cannot be subclassed: exact types, C getsets
        if kind is types.CoroutineType:
            frame, obj = obj.cr_frame, obj.cr_await
        elif kind is types.GeneratorType:
            frame, obj = obj.gi_frame, obj.gi_yieldfrom
        elif kind is types.AsyncGeneratorType:
            frame, obj = obj.ag_frame, obj.ag_await
        else:
            break
        if frame is not None:
            frames.append(frame)
        if obj is None:
            break
    frames.reverse()
    return frames, obj


def _awaiting(frames: list[FrameType], leaf: Any, asyncio: Any) -> str | None:
    if frames:
        code = frames[0].f_code
        found = _AWAITS.get((os.path.basename(code.co_filename), code.co_name))
        if found is not None:
            return found
    if leaf is None:
        return None
    if has_base(type(leaf), asyncio.Task):
        return f"task {_task_name(leaf, asyncio)!r}"
    if has_base(type(leaf), asyncio.Future):
        return type_name(type(leaf))
    if frames:  # e.g. the C iterator of a gather() future: the await line says more
        line = source_line(frames[0].f_code.co_filename, frames[0].f_lineno or 0)
        if line.strip():
            return line.strip().removeprefix("return ").removeprefix("await ")[:80]
    return type_qualname(type(leaf))


def _task_name(task: Any, asyncio: Any) -> str:
    # Task.get_name called explicitly: the C method, never a subclass's override.
    return exact_str(asyncio.Task.get_name(task)) or "?"


def collect_tasks(stacks: dict[int, list[FrameType]], names: dict[int, str],
                  frame_dict: Callable[[FrameType], dict[str, Any]]) -> dict[str, Any]:
    """``{"loops": [...], "tasks": [...], "tasks_truncated": bool}`` for the whole process."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return {"loops": [], "tasks": [], "tasks_truncated": False}
    on_cpu = {id(f) for frames in stacks.values() for f in frames}
    loop_thread = _loop_threads(stacks)
    loops: dict[int, dict[str, Any]] = {}
    tasks = []
    registered = _registered_tasks()
    for task in registered[:MAX_TASKS]:
        if not has_base(type(task), asyncio.Future):
            continue
        try:
            # asyncio's own (C) methods called explicitly: a subclass's overrides never run.
            loop = asyncio.Future.get_loop(task)
            done = asyncio.Future.done(task)
            is_task = has_base(type(task), asyncio.Task)
            name = _task_name(task, asyncio) if is_task else type_name(type(task))
            coro = asyncio.Task.get_coro(task) if is_task else None
        except Exception:  # noqa: S112 (a task torn down under us: skip it, never fail)
            continue
        frames, leaf = _chain(coro)
        if done:
            state = "cancelled" if asyncio.Future.cancelled(task) else "done"
        elif frames and id(frames[0]) in on_cpu:
            state = "running"
        else:
            state = "pending"
        ident = loop_thread.get(id(loop))
        info = loops.setdefault(id(loop), {
            "id": id(loop), "thread": ident, "thread_name": names.get(ident) if ident else None,
            "type": type_qualname(type(loop)), "tasks": 0})
        info["tasks"] += 1
        tasks.append({
            "id": id(task), "name": name, "state": state, "loop": id(loop),
            "awaiting": _awaiting(frames, leaf, asyncio) if state == "pending" else None,
            "frames": [frame_dict(f) for f in frames],
        })
    tasks.sort(key=lambda t: (t["loop"], t["name"], t["id"]))
    return {"loops": sorted(loops.values(), key=lambda lp: (lp["thread"] or 0, lp["id"])),
            "tasks": tasks, "tasks_truncated": len(registered) > MAX_TASKS}
