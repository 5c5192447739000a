"""Collapse identical stacks: "12 threads: ...", "180 tasks: ...". Pure data, both sides use it.

``group_threads``/``group_tasks`` work on one process (the agent sends their groups);
``group_threads_across``/``group_tasks_across`` on the results of several processes (the
CLI groups a whole service's ``stacks --all``), with members named ``(pid, id, name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["group_tasks", "group_tasks_across", "group_threads", "group_threads_across"]


def _frames_key(frames: list[dict[str, Any]]) -> tuple[tuple[str, int, str], ...]:
    return tuple((f["filename"], f["lineno"], f["function"]) for f in frames)


def _thread_key(thread: dict[str, Any]) -> Any:
    wait = thread.get("wait") or {}
    return (thread.get("state"), wait.get("kind"), _frames_key(thread["frames"]))


def _task_key(task: dict[str, Any]) -> Any:
    return (task.get("state"), task.get("awaiting"), _frames_key(task["frames"]))


def _group(items: list[dict[str, Any]], key_of: Callable[[dict[str, Any]], Any], member: str,
           copied: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[Any, dict[str, Any]] = {}
    for item in items:
        key = key_of(item)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"count": 0, "members": [], "names": [],
                                   "frames": item["frames"]}
            group.update((k, item.get(k)) for k in copied)
        group["count"] += 1
        group["members"].append(item[member])
        group["names"].append(item["name"])
    return sorted(groups.values(), key=lambda g: (-g["count"], min(g["names"])))


def group_threads(threads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Threads with the same state, wait kind and frames, largest group first."""
    return _group([t for t in threads if not t.get("agent")], _thread_key, "ident",
                  ("state", "wait"))


def group_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks of one loop with the same state, awaited object and await chain."""
    def key(t: dict[str, Any]) -> Any:
        return (t.get("loop"), _task_key(t))

    return _group(tasks, key, "id", ("state", "awaiting", "loop"))


def _live(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A C-level (faulthandler) dump has frames but no states: it is shown on its own.
    return [p for p in processes if p.get("fallback") != "faulthandler"]


def _across(items: list[dict[str, Any]], key_of: Callable[[dict[str, Any]], Any],
            copied: tuple[str, ...]) -> list[dict[str, Any]]:
    groups = _group(items, key_of, "member", copied)
    for g in groups:
        g["pids"] = sorted({m[0] for m in g["members"]})
    groups.sort(key=lambda g: (-g["count"], g["members"][0]))
    return groups


def group_threads_across(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Threads of several processes (``stacks`` results) with the same state, wait kind
    and frames, largest group first; identical threads of one process group too.

    Each group: ``count``, ``members`` (``(pid, ident, name)`` in process order),
    ``names``, ``pids`` (sorted, distinct), ``frames``, ``state`` and the first member's
    ``wait``. Agent threads and C-level (faulthandler) dumps are left out.
    """
    items = [{**t, "member": (p["pid"], t["ident"], t["name"])}
             for p in _live(processes) for t in p.get("threads") or [] if not t.get("agent")]
    return _across(items, _thread_key, ("state", "wait"))


def group_tasks_across(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Asyncio tasks of several processes with the same state, awaited object and await
    chain (whatever their loop), largest group first; members ``(pid, id, name)``."""
    items = [{**t, "member": (p["pid"], t["id"], t["name"])}
             for p in _live(processes) for t in p.get("tasks") or []]
    return _across(items, _task_key, ("state", "awaiting"))
