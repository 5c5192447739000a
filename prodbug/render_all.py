"""Human output for many processes at once: ``stacks --all``, identical stacks grouped
across processes (``3 threads in 3 processes ...``), each process's own below them."""

from __future__ import annotations

from typing import Any

from prodbug.grouping import group_tasks_across, group_threads_across
from prodbug.render import (
    _C_LEVEL,
    _REDACTED,
    Style,
    _frames,
    _names,
    _number,
    _pid_key,
    _prepare,
    _q,
    _render_dump_threads,
    _render_hang,
    _render_prepared,
    _short_argv,
    _table,
    _thread_block,
    _wait_text,
    cpu_window_text,
    format_duration,
)
from prodbug.textsafe import printable_tree

__all__ = ["render_stacks_all"]


_MEMBER_PIDS = 6
_MEMBER_NAMES = 3


def _process_order(process: dict[str, Any]) -> tuple[bool, tuple[int, int, str]]:
    """The door first, then the members by pid."""
    return (process.get("role") != "door", _pid_key(process.get("pid")))


def _own_threads(process: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in process.get("threads") or [] if not t.get("agent")]


def _hottest(process: dict[str, Any]) -> str:
    """The thread using the most CPU, when it is busy ("running")."""
    best: tuple[float, str] | None = None
    for thread in _own_threads(process):
        cpu = _number(thread.get("cpu_percent"))
        if cpu is not None and cpu >= 10 and (best is None or cpu > best[0]):
            best = (cpu, str(thread.get("name")))
    return "-" if best is None else f"{_q(best[1])} {best[0]:.0f}% CPU"


def _members_text(members: list[tuple[Any, Any, str]]) -> str:
    """``pid 101 'MainThread', pid 102 'MainThread'``; with several members in one
    process, ``pid 101 'a', 'b'; pid 102 'c'``; all in one process, ``'a', 'b'``."""
    by_pid: dict[Any, list[str]] = {}
    for pid, _, name in members:
        by_pid.setdefault(pid, []).append(name)
    if len(by_pid) == 1:  # the heading says "in pid 101" already
        return _names([name for _, _, name in members])
    parts = [f"pid {pid} " + _names(names, _MEMBER_NAMES)
             for pid, names in list(by_pid.items())[:_MEMBER_PIDS]]
    one_each = all(len(names) == 1 for names in by_pid.values())
    text = (", " if one_each else "; ").join(parts)
    more = len(by_pid) - _MEMBER_PIDS
    return text + (f" and {more} more process{'es' if more > 1 else ''}" if more > 0 else "")


def _where(group: dict[str, Any]) -> str:
    pids = group["pids"]
    return f"in {len(pids)} processes" if len(pids) > 1 else f"in pid {pids[0]}"


def _summary(processes: list[dict[str, Any]], missing: list[Any], style: Style) -> str:
    n = len(processes)
    text = f"{n} process{'es' if n != 1 else ''}" if n else "no process answered"
    door = next((p for p in processes if p.get("role") == "door"), None)
    members = sum(1 for p in processes if p.get("role") == "member")
    if door is not None:
        text += f" (door pid {door.get('pid')}, {members} member{'s' if members != 1 else ''})"
    if not missing:
        return text
    if not any(isinstance(m, dict) and "target" in m for m in missing):
        gone = ", ".join(
            f"pid {m.get('pid')} ({m.get('reason') or 'no reason given'})"
            if isinstance(m, dict) else str(m) for m in missing)
        return text + "; " + style.red(f"{len(missing)} did not answer: {gone}")
    lines = [text + "; " + style.red(f"{len(missing)} did not answer:")]
    for m in missing:  # a fleet: one line each, the target first
        where = str(m.get("target"))
        if m.get("pid") is not None:
            where += f" pid {m.get('pid')}"
        lines.append(f"  {where}: {m.get('reason') or 'no reason given'}")
    return "\n".join(lines)


class _Across:
    """Several processes' printable results, their shared stacks (``#1``...) and what
    is left for each process alone."""

    def __init__(self, processes: list[dict[str, Any]], style: Style) -> None:
        self.processes = processes
        self.style = style
        self.thread_groups = [g for g in group_threads_across(processes) if g["count"] > 1]
        self.task_groups = [g for g in group_tasks_across(processes) if g["count"] > 1]
        self.labels: dict[Any, list[str]] = {}  # pid -> the shared stacks it is in
        self.shared_threads: set[tuple[Any, Any]] = set()  # (pid, ident)
        self.shared_tasks: set[tuple[Any, Any]] = set()  # (pid, task id)
        for n, g in enumerate(self.thread_groups + self.task_groups, 1):
            for pid in g["pids"]:
                self.labels.setdefault(pid, []).append(f"#{n}")
            shared = self.shared_threads if n <= len(self.thread_groups) else self.shared_tasks
            shared.update((pid, ident) for pid, ident, _ in g["members"])
        self.threads = {(p.get("pid"), t["ident"]): t for p in processes
                        for t in _own_threads(p)}
        self.names = {p.get("pid"): {t["ident"]: t["name"] for t in p.get("threads") or []
                                     if "name" in t}  # a C-level dump names no thread
                      for p in processes}

    def own_threads(self, process: dict[str, Any]) -> list[dict[str, Any]]:
        pid = process.get("pid")
        return [t for t in _own_threads(process) if (pid, t["ident"]) not in self.shared_threads]

    def own_tasks(self, process: dict[str, Any]) -> list[dict[str, Any]]:
        pid = process.get("pid")
        return [t for t in process.get("tasks") or [] if (pid, t["id"]) not in self.shared_tasks]

    def table(self) -> list[str]:
        rows = [("PID", "ROLE", "THREADS", "HOT", "STACKS", "COMMAND")]
        for process in self.processes:
            if process.get("fallback") == "faulthandler":
                where = ["C-level dump below"]
            else:
                where = [", ".join(self.labels.get(process.get("pid"), []))]
                own = len(self.own_threads(process)) + len(self.own_tasks(process))
                where += [f"{own} below"] if own else []
                where += ["hang dump below"] if process.get("hang_dump") else []
            rows.append((str(process.get("pid")), str(process.get("role") or "-"),
                         str(len(_own_threads(process))), _hottest(process),
                         " + ".join(w for w in where if w) or "-",
                         _short_argv(process.get("argv"), 60)))
        return _table(rows, self.style)

    def _state(self, group: dict[str, Any]) -> str:
        members = [(pid, self.threads[(pid, ident)]) for pid, ident, _ in group["members"]]
        text = str(group.get("state") or "?")
        since = [_number(t.get("since_s")) for _, t in members]
        if all(s is not None and s >= 1 for s in since):
            text += f" {format_duration(min(s for s in since if s is not None))}+"
        waits = {_wait_text(t, self.names[pid]) for pid, t in members}
        if len(waits) == 1:
            text += waits.pop()
        else:  # e.g. each process's own lock: the same kind, not the same object
            kind = (group.get("wait") or {}).get("kind")
            text += f" on a {kind} (not the same one in each)" if kind else ""
        return text

    def shared(self, lines: list[str]) -> None:
        style = self.style
        for n, g in enumerate(self.thread_groups, 1):
            heading = style.bold(f"#{n} {g['count']} threads {_where(g)}")
            lines.append(f"{heading} ({_members_text(g['members'])}): {self._state(g)}, "
                         f"the same stack:")
            held = [(pid, name, h) for pid, ident, name in g["members"]
                    for h in self.threads[(pid, ident)].get("holds") or []]
            for pid, name, h in held[:_MEMBER_PIDS]:
                lines.append(f"    {style.dim('holds')} {h['what']} (pid {pid} {_q(name)})")
            if len(held) > _MEMBER_PIDS:
                lines.append(f"    {style.dim('holds')} ... ({len(held) - _MEMBER_PIDS} more)")
            _frames(lines, g["frames"], style, "    ")
            lines.append("")
        for n, g in enumerate(self.task_groups, len(self.thread_groups) + 1):
            state = str(g.get("state")) + (f" awaiting {g['awaiting']}" if g.get("awaiting")
                                           else "")
            heading = style.bold(f"#{n} {g['count']} asyncio tasks {_where(g)}")
            lines.append(f"{heading} ({_members_text(g['members'])}): {state}, the same stack:")
            _frames(lines, g["frames"], style, "    ")
            lines.append("")

    def own(self, lines: list[str], process: dict[str, Any],
            hang_threads: list[dict[str, Any]]) -> None:
        """What only this process shows, under a heading naming it."""
        style = self.style
        section: list[str] = []
        if process.get("fallback") == "faulthandler":
            section.append(style.yellow(_C_LEVEL))
            _render_dump_threads(section, process.get("threads") or [], {}, style)
            section.append("")
        else:
            for thread in self.own_threads(process):
                _thread_block(section, thread, self.names[process.get("pid")], style)
            self._own_tasks(section, process)
            _render_hang(section, process, hang_threads, style)
        if section:
            role = process.get("role")
            lines.append(style.bold(f"Process {process.get('pid')}")
                         + (f" ({role})" if role else "")
                         + f": {_short_argv(process.get('argv'))}")
            lines += section

    def _own_tasks(self, lines: list[str], process: dict[str, Any]) -> None:
        style = self.style
        own = self.own_tasks(process)
        for loop in process.get("loops") or []:
            total = sum(1 for t in process.get("tasks") or [] if t["loop"] == loop["id"])
            mine = [t for t in own if t["loop"] == loop["id"]]
            if not mine:
                continue
            where = (f"thread {_q(loop['thread_name'])}" if loop.get("thread_name")
                     else "no running thread")
            lines.append(style.bold(f"Event loop {loop['type']} in {where}: {total} tasks")
                         + (f" ({total - len(mine)} in shared stacks)" if len(mine) < total
                            else ""))
            for task in mine:
                state = str(task.get("state")) + (
                    f" awaiting {task['awaiting']}" if task.get("awaiting") else "")
                lines.append(f"  {style.bold('Task: ' + _q(task['name']))} ({state})")
                _frames(lines, task["frames"], style, "      ")
            lines.append("")
        if process.get("tasks_truncated"):
            lines.append("(more tasks than shown: the dump keeps at most 10000)")
            lines.append("")


def render_stacks_all(result: dict[str, Any], style: Style, *, group: bool = True) -> str:
    """Several processes (``stacks --all``): ``{"processes": [...], "missing": [...]}``.

    A summary line (and who did not answer); every process's deadlocks; a table of the
    processes (door first, then members by pid) saying where each one's stacks are;
    stacks shared by several threads, across processes or within one, shown once and
    numbered (``#1``); then, under each process, its threads and tasks that are its own
    and its hang dump. ``group=False``: each process in full, one after another.
    """
    prepared = sorted((_prepare(p) for p in result.get("processes") or []),
                      key=lambda ph: _process_order(ph[0]))
    processes = [p for p, _ in prepared]
    missing = printable_tree(list(result.get("missing") or []))
    lines = [_summary(processes, missing, style), ""]
    window = cpu_window_text(processes)
    if group and window is not None:  # ungrouped, each process's heading says its own
        lines.insert(1, window)
    if not group:
        for process, hang_threads in prepared:
            role = process.get("role")
            lines.append(style.bold(f"=== pid {process.get('pid')}"
                                    + (f" ({role})" if role else "") + " ==="))
            lines.append(_render_prepared(process, hang_threads, style, group=False))
        return "\n".join(lines).rstrip() + "\n"
    for process in processes:
        for cycle in process.get("deadlocks") or []:
            lines.append(style.red(style.bold(f"DEADLOCK in pid {process.get('pid')}")) + ": "
                         + cycle["description"].removeprefix("deadlock: "))
    if lines[-1]:
        lines.append("")
    across = _Across(processes, style)
    lines += across.table()
    lines.append("")
    across.shared(lines)
    for process, hang_threads in prepared:
        across.own(lines, process, hang_threads)
    if any(p.get("locals_redacted") for p in processes):
        lines.append(style.dim(_REDACTED))
    return "\n".join(lines).rstrip() + "\n"
