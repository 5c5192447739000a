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

from prodbug.textsafe import printable, printable_tree

_STDLIB = re.compile(r"/lib/python3\.\d+/")

__all__ = ["Style", "format_bytes", "format_duration", "render_audit", "render_info",
           "render_ps", "render_stacks"]


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


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def cpu_window_text(results: list[dict[str, Any]]) -> str | None:
    """What the CPU figures of these dumps cover: ``CPU % over the last 12.3 s`` (since the
    agent's previous dump), ``over a 0.05 s sample``; a range for several processes; None
    when no dump measured CPU (``--cpu-interval 0``, an older agent)."""
    windows = [w for w in (r.get("cpu_window") for r in results)
               if isinstance(w, dict) and w.get("kind") in ("since_last", "sample")
               and _number(w.get("seconds")) is not None]
    if not windows:
        return None
    seconds = sorted(float(w["seconds"]) for w in windows)
    span = _seconds(seconds[0]) if seconds[0] == seconds[-1] else \
        f"{_seconds(seconds[0])[:-2]}-{_seconds(seconds[-1])}"
    kinds = {w["kind"] for w in windows}
    if kinds == {"sample"}:
        return f"CPU % over a {span} sample" if len(windows) == 1 else \
            f"CPU % over {span} samples"
    if kinds == {"since_last"}:
        return f"CPU % over the last {span}"
    return f"CPU % over {span} (since the previous dump, or a sample)"


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
    if owner is not None and wait.get("kind") != "join":  # a join names its thread already
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
        own = _number(thread.get("cpu_window_s"))  # a thread younger than the window
        facts.append(f"{cpu:.0f}% CPU" + (f" in its first {_seconds(own)}" if own else ""))
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
    window = cpu_window_text([result])
    if window is not None:
        lines[1] += f"; {window}"
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
    if result.get("locals_truncated"):
        lines.append(style.dim("(locals cut: this dump's 64 KiB for locals was spent; "
                               "ask for fewer frames with --locals N)"))
    return "\n".join(lines).rstrip() + "\n"


#: Members named in a shared stack's heading, and processes; the table has them all.


def _pid_key(pid: Any) -> tuple[int, int, str]:
    return (0, pid, "") if type(pid) is int else (1, 0, str(pid))


def _table(rows: Sequence[Sequence[str]], style: Style) -> list[str]:
    """Aligned columns, the last one left ragged; the first row is the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for n, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
        line = (line + "  " + row[-1]).rstrip()
        out.append(style.bold(line) if n == 0 else line)
    return out


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
