"""Human output: stack dumps, process info, the local agent list and the audit trail.

Every renderer first makes what the service sent printable (``textsafe``: a thread name or
a local may carry terminal escape sequences), then lays it out and colours it.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prodbug.grouping import group_tasks_across, group_threads_across
from prodbug.textsafe import printable, printable_tree

_STDLIB = re.compile(r"/lib/python3\.\d+/")

__all__ = ["Style", "format_bytes", "format_duration", "render_audit", "render_info",
           "render_ps", "render_stacks", "render_stacks_all"]


class Style:
    """ANSI colour when writing to a terminal (and NO_COLOR is unset), plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``4d03h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float) -> str:
    """``812K``, ``212M``, ``1.4G`` (powers of 1024)."""
    if n < 1 << 20:
        return f"{n / 1024:.0f}K"
    if n < 1 << 30:
        return f"{n / (1 << 20):.0f}M"
    return f"{n / (1 << 30):.1f}G"


def _natural(name: str) -> list[Any]:
    """'stuck-2' before 'stuck-10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _q(text: Any) -> str:
    """Quoted like ``repr`` quotes a name, for text already made printable (``repr`` would
    double the backslashes of its escapes)."""
    text = str(text)
    return f'"{text}"' if "'" in text and '"' not in text else f"'{text}'"


def _names(names: list[str], most: int = 6) -> str:
    ordered = sorted(names, key=lambda n: _natural(str(n)))
    text = ", ".join(_q(n) for n in ordered[:most])
    return text + (", ..." if len(ordered) > most else "")


def _short_path(filename: str) -> str:
    cwd = os.getcwd() + os.sep
    if filename.startswith(cwd):
        return filename[len(cwd):]
    marker = f"{os.sep}site-packages{os.sep}"
    if marker in filename:
        return filename.split(marker, 1)[1]
    stdlib = _STDLIB.search(filename)  # the target's stdlib, wherever its prefix is
    if stdlib is not None:
        return filename[stdlib.end():]
    return filename


def _argv(argv: Iterable[Any] | str) -> str:
    return argv if isinstance(argv, str) else " ".join(str(a) for a in argv)


def _short_argv(argv: Any, most: int = 80) -> str:
    text = _argv(argv or [])
    return text if len(text) <= most else text[:most - 3] + "..."


def _number(value: Any) -> float | None:
    """A finite int or float from the wire (never a bool), else None."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


#: Above this many threads (or tasks), identical stacks are shown once, with a count.
GROUP_ABOVE = 10


def _frames(lines: list[str], frames: list[dict[str, Any]], style: Style, indent: str) -> None:
    for frame in frames:
        where = style.dim(f"({_short_path(frame['filename'])}:{frame['lineno']})")
        lines.append(f"{indent}{frame['function']} {where}")
        if frame.get("line"):
            lines.append(f"{indent}    {frame['line']}")
        for name, value in (frame.get("locals") or {}).items():
            lines.append(f"{indent}    {style.dim(name + ' =')} {value}")


def _wait_text(thread: dict[str, Any], names: dict[int, str]) -> str:
    wait = thread.get("wait")
    if not wait:
        return ""
    text = f" on {wait['what']}"
    owner = wait.get("owner")
    if owner is not None:
        who = wait.get("owner_name") or names.get(owner) or str(owner)
        text += f" held by {_q(who)}"
    return text


def _thread_header(thread: dict[str, Any], names: dict[int, str], style: Style) -> str:
    state = str(thread.get("state", "unknown"))
    painted = style.green(state) if state == "running" else style.yellow(state)
    since = thread.get("since_s")
    if since is not None and since >= 1:
        painted += f" {format_duration(since)}+"
    facts = [painted + _wait_text(thread, names)]
    cpu = thread.get("cpu_percent")
    if cpu is not None:
        facts.append(f"{cpu:.0f}% CPU")
    if thread.get("daemon"):
        facts.append("daemon")
    tid = thread.get("native_id") or thread.get("ident")
    return f"Thread {tid} {style.bold(_q(thread['name']))} ({', '.join(facts)})"


def _render_threads(lines: list[str], result: dict[str, Any], style: Style,
                    group: bool) -> None:
    threads = [t for t in result["threads"] if not t.get("agent")]
    names = {t["ident"]: t["name"] for t in result["threads"]}
    by_ident = {t["ident"]: t for t in threads}
    groups = result.get("thread_groups") if group and len(threads) > GROUP_ABOVE else None
    shown: set[int] = set()
    for g in groups or []:
        if g["count"] < 2:
            continue
        first = by_ident[g["members"][0]]
        members = _names(g["names"])
        state = str(g.get("state", "?")) + _wait_text(first, names)
        lines.append(f"{style.bold(str(g['count']) + ' threads')} ({state}): {members}")
        _frames(lines, first["frames"], style, "    ")
        lines.append("")
        shown.update(g["members"])
    for thread in threads:
        if thread["ident"] not in shown:
            _thread_block(lines, thread, names, style)


def _thread_block(lines: list[str], thread: dict[str, Any], names: dict[int, str],
                  style: Style) -> None:
    lines.append(_thread_header(thread, names, style))
    for held in thread.get("holds") or []:
        lines.append(f"    {style.dim('holds')} {held['what']}")
    _frames(lines, thread["frames"], style, "    ")
    if thread.get("truncated"):
        lines.append("    ... (outer frames cut)")
    lines.append("")


def _render_tasks(lines: list[str], result: dict[str, Any], style: Style, group: bool) -> None:
    tasks = result.get("tasks") or []
    for loop in result.get("loops") or []:
        mine = [t for t in tasks if t["loop"] == loop["id"]]
        where = (f"thread {_q(loop['thread_name'])}" if loop.get("thread_name")
                 else "no running thread")
        lines.append(style.bold(f"Event loop {loop['type']} in {where}: {len(mine)} tasks"))
        groups = [g for g in result.get("task_groups") or [] if g.get("loop") == loop["id"]]
        if not (group and len(mine) > GROUP_ABOVE):
            groups = [{"count": 1, "names": [t["name"]], "frames": t["frames"],
                       "state": t["state"], "awaiting": t.get("awaiting")} for t in mine]
        for g in groups:
            label = (f"{g['count']} tasks" if g["count"] > 1 else "Task") + ": " + _names(
                g["names"])
            state = str(g.get("state"))
            if g.get("awaiting"):
                state += f" awaiting {g['awaiting']}"
            lines.append(f"  {style.bold(label)} ({state})")
            _frames(lines, g["frames"], style, "      ")
        lines.append("")
    if result.get("tasks_truncated"):
        lines.append("(more tasks than shown: the dump keeps at most 10000)")


def _render_dump_threads(lines: list[str], threads: list[dict[str, Any]],
                         names: dict[int, str], style: Style) -> None:
    for thread in threads:
        name = names.get(thread["ident"])
        label = f"Thread {thread['ident']:#x}" + (f" {_q(name)}" if name else "")
        if thread.get("current"):
            label += " (received the signal)"
        lines.append("  " + style.bold(label))
        _frames(lines, thread["frames"], style, "      ")


def _prepare(result: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One process's result made printable, and its hang dump's threads (parsed first:
    the dump is text the parser must see as it was written)."""
    hang = result.get("hang_dump")
    hang_threads: list[dict[str, Any]] = []
    if isinstance(hang, dict):
        from prodbug.faultdump import parse_dump

        hang_threads = printable_tree(parse_dump(str(hang.get("text") or "")))
    return printable_tree(result), hang_threads


def _render_hang(lines: list[str], result: dict[str, Any], hang_threads: list[dict[str, Any]],
                 style: Style) -> None:
    hang = result.get("hang_dump")
    if not hang:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(hang["time"])))
    lines.append(style.red(style.bold(
        f"Latest hang dump, {stamp}: no Python thread could run for "
        f"{hang.get('seconds') or '?'}s")))
    names = {t["ident"]: t["name"] for t in result["threads"]}
    _render_dump_threads(lines, hang_threads, names, style)


_C_LEVEL = "C-level dump (faulthandler): frames only; no CPU, states, source lines or tasks"
_REDACTED = ("(locals whose names look secret are redacted; a debugger key may ask for them "
             "with --no-redact)")


def render_stacks(result: dict[str, Any], style: Style, *, group: bool = True) -> str:
    """One process: deadlocks first, then threads (identical stacks grouped when there
    are many), event loops with their tasks, and the latest hang dump."""
    return _render_prepared(*_prepare(result), style, group)


def _render_prepared(result: dict[str, Any], hang_threads: list[dict[str, Any]], style: Style,
                     group: bool) -> str:
    threads = result["threads"]
    hidden = sum(1 for t in threads if t.get("agent"))
    lines = [
        f"{style.bold('Process ' + str(result['pid']))}: {_argv(result.get('argv', []))}",
        f"Python {result.get('python', '?')} ({result.get('implementation', '?')}), "
        f"{len(threads) - hidden} thread{'s' if len(threads) - hidden != 1 else ''}"
        + (f" (+{hidden} prodbug agent)" if hidden else "")
        + (f", {len(result.get('tasks') or [])} asyncio tasks" if result.get("loops") else ""),
        "",
    ]
    if result.get("fallback") == "faulthandler":
        lines[1] = f"{len(threads)} threads"
    for cycle in result.get("deadlocks") or []:
        lines.append(style.red(style.bold("DEADLOCK")) + ": "
                     + cycle["description"].removeprefix("deadlock: "))
        lines.append("")
    if result.get("fallback") == "faulthandler":
        lines.append(style.yellow(_C_LEVEL))
        _render_dump_threads(lines, threads, {}, style)
        return "\n".join(lines).rstrip() + "\n"
    _render_threads(lines, result, style, group)
    _render_tasks(lines, result, style, group)
    _render_hang(lines, result, hang_threads, style)
    if result.get("locals_redacted"):
        lines.append(style.dim(_REDACTED))
    return "\n".join(lines).rstrip() + "\n"


#: Members named in a shared stack's heading, and processes; the table has them all.
_MEMBER_PIDS = 6
_MEMBER_NAMES = 3


def _pid_key(pid: Any) -> tuple[int, int, str]:
    return (0, pid, "") if type(pid) is int else (1, 0, str(pid))


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
    if missing:
        gone = ", ".join(
            f"pid {m.get('pid')} ({m.get('reason') or 'no reason given'})"
            if isinstance(m, dict) else str(m) for m in missing)
        text += "; " + style.red(f"{len(missing)} did not answer: {gone}")
    return text


def _table(rows: Sequence[Sequence[str]], style: Style) -> list[str]:
    """Aligned columns, the last one left ragged; the first row is the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for n, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
        line = (line + "  " + row[-1]).rstrip()
        out.append(style.bold(line) if n == 0 else line)
    return out


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


def render_info(result: dict[str, Any], style: Style) -> str:
    """``prodbug info`` as aligned ``key: value`` lines."""
    result = printable_tree(result)
    agent = result.get("agent", {})
    debug = result.get("debug", {})
    loaded = [k.removesuffix("_loaded") for k, v in debug.items()
              if k.endswith("_loaded") and v]
    active = [k for k in ("trace_function", "profile_function", "faulthandler_enabled")
              if debug.get(k)]
    tools = debug.get("monitoring_tools") or {}
    rows = [
        ("pid", str(result["pid"])),
        ("command", _argv(result.get("argv", []))),
        ("cwd", result.get("cwd", "?")),
        ("python", f"{result.get('python', '?')} ({result.get('implementation', '?')}) "
                   f"{result.get('executable', '')}"),
        ("uptime", format_duration(float(result.get("uptime_s", 0)))),
        ("rss", f"{int(result.get('rss_bytes', 0)) / (1 << 20):.1f} MiB"),
        ("cpu", f"{result.get('cpu_user_s', 0)}s user, {result.get('cpu_system_s', 0)}s system "
                f"({result.get('cpu_percent_avg', 0)}% average)"),
        ("threads", f"{result.get('threads', '?')} ({result.get('python_threads', '?')} Python)"),
        ("agent", f"{agent.get('version', '?')} (protocol {agent.get('protocol', '?')}), "
                  f"{agent.get('tcp_endpoint') or 'no tcp'}, {agent.get('ipc_endpoint')}"),
        ("dumps", (f"C-level on signal {agent['dump_signal']}" if agent.get("dump_signal")
                   else "no C-level dump signal")
                  + f", hang dump {agent.get('hang_dump', 'off')}"
                  + (f" ({agent['hang_seconds']:g}s)" if agent.get("hang_seconds") else "")),
        ("debuggers", (", ".join(loaded) or "none loaded")
         + (f"; debugpy set up since "
            f"{time.strftime('%H:%M:%S', time.localtime(float(agent['debugpy_since'])))}"
            f" (reached only through the agent: no port of its own)"
            if agent.get("debugpy_since") else "")),
        ("hooks", ", ".join(active + [f"sys.monitoring:{v}" for v in tools.values()]) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{style.bold(k.ljust(width))}  {v}\n" for k, v in rows)


_ROLE_ORDER = {"door": 0, "member": 1}


def _debugpy_cell(entry: dict[str, Any], now: float) -> str:
    """The agent's debugpy state (``ready 3m05s``: set up by prodbug that long ago;
    ``starting``, ``failed``, ``off``), or ``loaded`` when the process imported debugpy
    itself; ``-`` when the agent does not say."""
    state = entry.get("debugpy")
    since = _number(entry.get("debugpy_since"))
    if state is True or state == "ready" or (state is None and since is not None):
        return "ready" + (f" {format_duration(max(0.0, now - since))}" if since is not None
                          else "")
    if isinstance(state, str) and state != "off":
        return state
    loaded = entry.get("debugpy_loaded")
    if loaded is True:
        return "loaded"
    if state is False or state == "off" or loaded is False:
        return "off"
    return "-"


def _count(value: Any) -> str:
    return str(value) if type(value) is int else "-"


def render_ps(entries: list[dict[str, Any]], style: Style, service: str | None = None) -> str:
    """Agents as a table: a service's door first, then its members by pid (entries of no
    service last); a ``service`` line above when one was asked about. A value an older
    agent does not report shows as ``-``."""
    entries = printable_tree(entries)
    title = f"service {_q(printable(service))}" if service is not None else None
    if not entries:
        return (f"{title}: no agents\n" if title else "no local agents\n")
    now = time.time()
    many = service is None and any(e.get("service") for e in entries)

    def order(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e.get("service") is None, str(e.get("service") or ""),
                _ROLE_ORDER.get(str(e.get("role")), 2), _pid_key(e.get("pid")))

    rows = [("PID", "PPID", "ROLE") + (("SERVICE",) if many else ()) + (
        "UPTIME", "CPU%", "RSS", "THREADS", "SESSIONS", "DEBUGPY", "COMMAND")]
    for e in sorted(entries, key=order):
        started = _number(e.get("started_at"))
        cpu = _number(e.get("cpu_percent"))
        rss = _number(e.get("rss_bytes"))
        rows.append((_count(e.get("pid")), _count(e.get("ppid")), str(e.get("role") or "-"))
                    + ((str(e.get("service") or "-"),) if many else ()) + (
            format_duration(max(0.0, now - started)) if started is not None else "-",
            f"{cpu:.1f}" if cpu is not None else "-",
            format_bytes(rss) if rss is not None else "-",
            _count(e.get("threads")),
            _count(e.get("sessions")),
            _debugpy_cell(e, now),
            _short_argv(e.get("argv")),
        ))
    lines = _table(rows, style)
    if title:
        doors = [str(e.get("pid")) for e in entries if e.get("role") == "door"]
        members = sum(1 for e in entries if e.get("role") == "member")
        lines.insert(0, f"{style.bold(title)}: " + (f"door pid {', '.join(doors)}, "
                                                      if doors else "no door, ")
                     + f"{members} member{'s' if members != 1 else ''}")
    return "\n".join(lines) + "\n"


def render_audit(records: list[dict[str, Any]]) -> str:
    """``prodbug audit``: one record a line, time and event first, then ``key=value``.

    A record holds what clients sent (a command name, a line typed into pdb): a newline or
    an escape sequence in it must neither forge a record nor reach the terminal.
    """
    out = []
    for rec in printable_tree(records):
        if not isinstance(rec, dict):
            out.append(printable(rec))
            continue
        rest = " ".join(f"{k}={printable(v)}" for k, v in rec.items()
                        if k not in ("time", "event"))
        out.append(f"{rec.get('time', '?')}  {rec.get('event', '?')!s:8}  {rest}")
    return "".join(line + "\n" for line in out)
