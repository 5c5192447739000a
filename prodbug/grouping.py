"""Collapse identical stacks: "12 threads: ...", "180 tasks: ...". Pure data, both sides use it."""

from __future__ import annotations

from typing import Any

__all__ = ["group_tasks", "group_threads"]


def _frames_key(frames: list[dict[str, Any]]) -> tuple[tuple[str, int, str], ...]:
    return tuple((f["filename"], f["lineno"], f["function"]) for f in frames)


def _group(items: list[dict[str, Any]], key_of: Any, member: str,
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
    def key(t: dict[str, Any]) -> Any:
        wait = t.get("wait") or {}
        return (t.get("state"), wait.get("kind"), _frames_key(t["frames"]))

    return _group([t for t in threads if not t.get("agent")], key, "ident", ("state", "wait"))


def group_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks of one loop with the same state, awaited object and await chain."""
    def key(t: dict[str, Any]) -> Any:
        return (t.get("loop"), t.get("state"), t.get("awaiting"), _frames_key(t["frames"]))

    return _group(tasks, key, "id", ("state", "awaiting", "loop"))
