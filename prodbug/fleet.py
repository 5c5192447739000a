"""Fleets: one command against many targets at once, merged into one report.

Each target goes through ``connect()`` like a single one (any TARGET form, a name, a
tunnel); they run in parallel with bounded concurrency, each within its own deadline, and
one that fails or hangs never stops the others. The report groups identical stacks across
every process of every target ("38 threads in 38 processes ... the same stack").
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError, ProdbugError

__all__ = ["DEFAULT_CONCURRENCY", "merge_stacks", "read_targets_file", "run_fleet"]

#: Targets asked at once. A hanging target holds its slot for its whole timeout, so the
#: default is large enough that a fleet of this size finishes within one timeout.
DEFAULT_CONCURRENCY = 32
#: Lines in a --targets file.
_MAX_TARGETS = 10_000


def read_targets_file(path: str) -> list[str]:
    """TARGETs from a file, one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --targets {path}: {exc}") from None
    targets = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            targets.append(line)
    if not targets:
        raise ConfigError(f"--targets {path} lists no target (one per line)")
    if len(targets) > _MAX_TARGETS:
        raise ConfigError(f"--targets {path} lists {len(targets)} targets; at most "
                          f"{_MAX_TARGETS} at once")
    return targets


class _Progress:
    """``12/20 answered, 1 failed`` on a terminal's stderr, rewritten in place."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self._lock = threading.Lock()

    def step(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += 0 if ok else 1
            if self.enabled:
                sys.stderr.write(f"\r{self.done}/{self.total} answered"
                                 + (f", {self.failed} failed" if self.failed else "") + " ")
                sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\r" + " " * 40 + "\r")
            sys.stderr.flush()


def run_fleet(targets: list[str], ask: Callable[[str, float], dict[str, Any]], *,
              timeout: float, concurrency: int = DEFAULT_CONCURRENCY,
              progress: bool = False) -> list[dict[str, Any]]:
    """``ask(target, timeout)`` for every target in parallel; one entry per target, in
    the order given: ``{"target", "ok", "result"}`` or ``{"target", "ok": false,
    "error", "exit_code", "seconds"}``."""
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    shown = _Progress(len(targets), progress)

    def one(target: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            result = ask(target, timeout)
        except ProdbugError as exc:
            shown.step(False)
            return {"target": target, "ok": False, "error": str(exc),
                    "exit_code": exc.exit_code,
                    "seconds": round(time.monotonic() - started, 3)}
        except Exception as exc:  # one target's surprise must not cost the others
            shown.step(False)
            return {"target": target, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                    "exit_code": 1, "seconds": round(time.monotonic() - started, 3)}
        shown.step(True)
        return {"target": target, "ok": True, "result": result}

    try:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(targets)),
                                thread_name_prefix="prodbug-fleet") as pool:
            return list(pool.map(one, targets))
    finally:
        shown.close()


def merge_stacks(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``{"processes", "missing"}`` report from a fleet's ``stacks`` answers, every
    process labelled ``TARGET/PID`` (pids repeat across hosts)."""
    processes: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for entry in entries:
        target = entry["target"].removeprefix("tcp://")
        if not entry["ok"]:
            missing.append({"target": target, "reason": entry["error"]})
            continue
        result = entry["result"]
        for process in result.get("processes", [result]):
            processes.append({**process, "pid": f"{target}/{process.get('pid')}"})
        for gone in result.get("missing", []):
            missing.append({"target": target, "pid": gone.get("pid"),
                            "reason": gone.get("reason")})
    return {"processes": processes, "missing": missing}
