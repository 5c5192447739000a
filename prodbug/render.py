"""Human output: stack dumps, process info and the local agent list."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from typing import Any

_STDLIB = re.compile(r"/lib/python3\.\d+/")

__all__ = ["Style", "format_duration", "render_info", "render_ps", "render_stacks"]


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


def _argv(argv: Iterable[Any]) -> str:
    return " ".join(str(a) for a in argv)


def render_stacks(result: dict[str, Any], style: Style) -> str:
    """One process's threads, like ``py-spy dump``: a header per thread, innermost frame first."""
    lines = [
        f"{style.bold('Process ' + str(result['pid']))}: {_argv(result.get('argv', []))}",
        f"Python {result.get('python', '?')} ({result.get('implementation', '?')}) "
        f"{len(result['threads'])} threads",
        "",
    ]
    for thread in result["threads"]:
        state = str(thread.get("state", "unknown"))
        painted = style.green(state) if state == "running" else style.yellow(state)
        cpu = thread.get("cpu_percent")
        facts = [painted]
        if cpu is not None:
            facts.append(f"{cpu:.0f}% CPU")
        if thread.get("daemon"):
            facts.append("daemon")
        tid = thread.get("native_id") or thread.get("ident")
        lines.append(f"Thread {tid} {style.bold(repr(thread['name']))} ({', '.join(facts)})")
        for frame in thread["frames"]:
            where = style.dim(f"({_short_path(frame['filename'])}:{frame['lineno']})")
            lines.append(f"    {frame['function']} {where}")
            if frame.get("line"):
                lines.append(f"        {frame['line']}")
        if thread.get("truncated"):
            lines.append("    ... (outer frames cut)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_info(result: dict[str, Any], style: Style) -> str:
    """``prodbug info`` as aligned ``key: value`` lines."""
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
        ("debuggers", ", ".join(loaded) or "none loaded"),
        ("hooks", ", ".join(active + [f"sys.monitoring:{v}" for v in tools.values()]) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{style.bold(k.ljust(width))}  {v}\n" for k, v in rows)


def render_ps(entries: list[dict[str, Any]], style: Style) -> str:
    """The local agents as a table."""
    if not entries:
        return "no local agents\n"
    now = time.time()
    rows = [("PID", "UPTIME", "ENDPOINT", "COMMAND")]
    for e in entries:
        rows.append((
            str(e["pid"]),
            format_duration(now - float(e.get("started_at", now))),
            str(e.get("tcp_endpoint") or e.get("endpoint")),
            _argv(e.get("argv", []))[:80],
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    out = []
    for n, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        out.append(style.bold(line) if n == 0 else line)
    return "\n".join(out) + "\n"
