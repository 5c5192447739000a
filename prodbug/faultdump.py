"""faulthandler's C-level dumps: parse their text, and trigger one by signal on this host.

When a C call holds the GIL no Python thread can run, so the agent cannot answer; the
signal handler faulthandler installed for the agent still can, without the GIL. The CLI
uses it as a fallback for ``prodbug stacks --pid N`` (same host, same user or root).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from prodbug.errors import TargetUnreachable

__all__ = ["parse_dump", "signal_caught", "trigger_dump"]

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.+)$')
_MAX_READ = 1 << 20


def parse_dump(text: str) -> list[dict[str, Any]]:
    """Threads (ident, whether current, frames innermost first) from faulthandler output."""
    threads: list[dict[str, Any]] = []
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head is not None:
            threads.append({"ident": int(head[2], 16), "current": head[1] == "Current thread",
                            "frames": []})
            continue
        frame = _FRAME.match(line)
        if frame is not None and threads:
            threads[-1]["frames"].append(
                {"filename": frame[1], "lineno": int(frame[2]), "function": frame[3]})
    return threads


def signal_caught(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (never send one it would die of)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)", status, re.M)
    return match is not None and bool(int(match[1], 16) >> (signum - 1) & 1)


def trigger_dump(entry: dict[str, Any], wait: float = 3.0) -> dict[str, Any]:
    """Signal the agent's process for a faulthandler dump and return it, parsed."""
    pid = int(entry["pid"])
    signum = entry.get("dump_signal")
    path = entry.get("dump_file")
    if not isinstance(signum, int) or not isinstance(path, str):
        raise TargetUnreachable(f"process {pid} has no C-level dump signal registered")
    if not signal_caught(pid, signum):
        raise TargetUnreachable(
            f"process {pid} does not catch signal {signum}: not sending it (a stale registry "
            f"entry, or the application replaced the handler)")
    try:
        start = os.path.getsize(path)
        os.kill(pid, signum)
    except OSError as exc:
        raise TargetUnreachable(f"cannot ask process {pid} for a C-level dump: {exc}") from None
    deadline = time.monotonic() + wait
    size, stable_since = start, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = os.path.getsize(path)
        if now != size:
            size, stable_since = now, time.monotonic()
        elif size > start and time.monotonic() - stable_since >= 0.1:
            break
    if size <= start:
        raise TargetUnreachable(f"process {pid} wrote no C-level dump within {wait:g}s")
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(min(size - start, _MAX_READ)).decode("utf-8", "replace")
    return {"pid": pid, "argv": entry.get("argv", []), "fallback": "faulthandler",
            "dump_signal": signum, "threads": parse_dump(text), "text": text}
