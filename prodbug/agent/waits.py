"""What a waiting thread waits on, who holds the lock it wants, and deadlock cycles.

CPython does not record what a blocked thread waits for, so this reads the evidence that
is there, without running any of the host's code:

* known stdlib wait points from the innermost frames (``Condition.wait`` under
  ``Event.wait``, ``Queue.get``, ``Thread.join``, ``selectors``, ``subprocess`` ...);
* for user code blocked in C, the source line (``with LOCK:``, ``lock.acquire()``,
  ``time.sleep(...)``) with its expression resolved in the frame by dictionary lookups
  only (no properties, no ``__getattr__``, no ``__class__``: see ``introspect``);
* the owner of an ``RLock`` from its C ``repr`` (``owner=IDENT``), called explicitly;
* for any lock, the threads that are inside a ``with LOCK:`` block on that very object:
  the running frame's line lies in the block's body, found from the function's AST.
  A plain ``threading.Lock`` taken with ``acquire()`` and released later has no owner
  that can be known (see docs/stacks.md).
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from prodbug.agent.introspect import (
    MISSING,
    exact_int,
    exact_str,
    frame_local,
    has_base,
    instance_attr,
    lookup,
    source_line,
    source_lines,
)

__all__ = ["Analysis", "analyze", "clear_caches"]

_LOCK = type(threading.Lock())  # not subclassable
_RLOCK = type(threading.RLock())
_PY_RLOCK = getattr(threading, "_PyRLock", None)
_OWNER = re.compile(r"owner=(\d+)")
_DOTTED = r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*"
_WITH_LINE = re.compile(
    rf"^\s*(?:async\s+)?with\s+({_DOTTED})\s*(?:\(\s*\))?\s*(?:as\s+\w+\s*)?[:,]")
_ACQUIRE_LINE = re.compile(rf"({_DOTTED})\.acquire\(")
_MAX_SOURCE = 256 * 1024
_MAX_FILES = 256
#: ``ast.parse`` holds the GIL: a dump parses at most this many new files (the rest on the
#: next dumps), so a first dump of a large application never stalls the host for long.
_PARSES_PER_DUMP = 32

#: (module file basename, function name) of frames that mean "blocked in this stdlib wait".
_STDLIB_WAITS = {
    ("selectors.py", "select"): ("select", "selector / poll"),
    ("socket.py", "accept"): ("socket", "socket accept"),
    ("socket.py", "readinto"): ("socket", "socket read"),
    ("socket.py", "create_connection"): ("socket", "socket connect"),
    ("ssl.py", "read"): ("socket", "TLS read"),
    ("ssl.py", "recv"): ("socket", "TLS recv"),
    ("ssl.py", "recv_into"): ("socket", "TLS recv"),
    ("ssl.py", "do_handshake"): ("socket", "TLS handshake"),
    ("subprocess.py", "_try_wait"): ("subprocess", "child process to exit"),
    ("subprocess.py", "_communicate"): ("subprocess", "child process output"),
    ("base_events.py", "_run_once"): ("select", "asyncio event loop (idle)"),
}
_IO_CALLS = re.compile(r"\.(recv|recv_into|recvfrom|accept|connect|read|readline|readinto|"
                       r"send|sendall|getresponse|urlopen)\(|urlopen\(")


@dataclass
class Lockish:
    obj: Any
    name: str

    @property
    def kind(self) -> str:
        cls = type(self.obj)
        return "rlock" if has_base(cls, _RLOCK) or (
            _PY_RLOCK is not None and has_base(cls, _PY_RLOCK)) else "lock"

    def describe(self) -> str:
        return f"{'RLock' if self.kind == 'rlock' else 'Lock'} {self.name} at {id(self.obj):#x}"

    def owner(self) -> int | None:
        cls = type(self.obj)
        if has_base(cls, _RLOCK):
            # The C repr called explicitly: a subclass's own __repr__ never runs.
            match = _OWNER.search(_RLOCK.__repr__(self.obj))
            return int(match[1]) if match and match[1] != "0" else None
        if _PY_RLOCK is not None and has_base(cls, _PY_RLOCK):
            return exact_int(instance_attr(self.obj, "_owner"))
        return None


@dataclass
class Analysis:
    """Per thread ident: ``wait`` and ``holds`` dicts; and the deadlock cycles found."""

    waits: dict[int, dict[str, Any]]
    holds: dict[int, list[dict[str, Any]]]
    deadlocks: list[dict[str, Any]]


# -- resolving an expression in a frame, by lookups only -------------------------------------

def _resolve(expr: str, frame: FrameType) -> Any:
    head, *rest = expr.split(".")
    value = frame_local(frame, head)
    if value is MISSING:
        for scope in (frame.f_globals, vars(builtins)):
            if has_base(type(scope), dict):
                value = dict.get(scope, head, MISSING)
                if value is not MISSING:
                    break
    for name in rest:
        if value is MISSING:
            break
        value = lookup(value, name)
    return value


def _as_lock(obj: Any, name: str) -> Lockish | None:
    cls = type(obj)
    if cls is _LOCK or has_base(cls, _RLOCK) or (
            _PY_RLOCK is not None and has_base(cls, _PY_RLOCK)):
        return Lockish(obj, name)
    return None


# -- with-blocks from source -----------------------------------------------------------------

@dataclass(frozen=True)
class _WithBlock:
    expr: str
    body_first: int
    end: int


_blocks_cache: dict[str, dict[int, list[_WithBlock]]] = {}


def clear_caches() -> None:
    """Forget parsed sources (tests; or after a deploy replaced files)."""
    _blocks_cache.clear()


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """``node``'s descendants, not entering nested functions, lambdas or classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield child
        yield from _own_nodes(child)


def _with_blocks_of(scope: ast.AST) -> list[_WithBlock]:
    blocks = []
    for node in _own_nodes(scope):
        if isinstance(node, (ast.With, ast.AsyncWith)) and node.body:
            for item in node.items:
                expr = item.context_expr
                if isinstance(expr, (ast.Name, ast.Attribute)):
                    blocks.append(_WithBlock(ast.unparse(expr), node.body[0].lineno,
                                             node.end_lineno or node.body[-1].lineno))
    return blocks


class _Budget:
    def __init__(self, parses: int) -> None:
        self.parses = parses


def _file_blocks(filename: str, budget: _Budget) -> dict[int, list[_WithBlock]]:
    cached = _blocks_cache.get(filename)
    if cached is not None:
        return cached
    if budget.parses <= 0:
        return {}  # not now: a later dump parses it
    budget.parses -= 1
    table: dict[int, list[_WithBlock]] = {}
    lines = source_lines(filename)
    source = "".join(lines)
    if source and len(source) <= _MAX_SOURCE and ("with " in source):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
        if tree is not None:
            table[0] = _with_blocks_of(tree)  # module-level code
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    table.setdefault(first, []).extend(_with_blocks_of(node))
    if len(_blocks_cache) >= _MAX_FILES:
        _blocks_cache.pop(next(iter(_blocks_cache)))
    _blocks_cache[filename] = table
    return table


def _blocks_for(code: CodeType, budget: _Budget) -> list[_WithBlock]:
    table = _file_blocks(code.co_filename, budget)
    if code.co_name == "<module>":
        return table.get(0, [])
    return table.get(code.co_firstlineno, [])


# -- per-thread inference --------------------------------------------------------------------

def _base(frame: FrameType) -> str:
    return os.path.basename(frame.f_code.co_filename)


def _self_of(frame: FrameType) -> Any:
    found = frame_local(frame, "self")
    return None if found is MISSING else found


def _stdlib_wait(frames: list[FrameType]) -> dict[str, Any] | None:
    inner = frames[0]
    key = (_base(inner), inner.f_code.co_name)
    if key[0] == "threading.py" and key[1] in {"wait", "_wait_for_tstate_lock", "join"}:
        for outer in frames[:5]:
            where = (_base(outer), outer.f_code.co_name)
            if where == ("threading.py", "join"):
                # The thread's own fields, not its properties: a subclass may override them.
                target = _self_of(outer)
                is_thread = has_base(type(target), threading.Thread)
                ident = exact_int(instance_attr(target, "_ident")) if is_thread else None
                name = (exact_str(instance_attr(target, "_name")) if is_thread else None) or "?"
                return {"kind": "join", "what": f"thread {name!r} to finish", "owner": ident}
            if where == ("threading.py", "wait") and outer is not inner:
                return {"kind": "event", "what": "threading.Event"}
            if where[0] == "threading.py" and where[1] in ("acquire", "__enter__"):
                return {"kind": "semaphore", "what": "threading.Semaphore"}
            if where == ("threading.py", "_wait"):
                return {"kind": "barrier", "what": "threading.Barrier"}
            if where[0] == "queue.py" and where[1] in ("get", "put"):
                return {"kind": "queue", "what": f"queue.Queue.{where[1]}"}
            if where[0] == "_base.py" and "futures" in outer.f_code.co_filename:
                return {"kind": "future", "what": f"concurrent.futures {where[1]}"}
        return {"kind": "condition", "what": "threading.Condition"}
    for frame in frames[:3]:
        found = _STDLIB_WAITS.get((_base(frame), frame.f_code.co_name))
        if found is not None:
            return {"kind": found[0], "what": found[1]}
    return None


def _source_wait(frame: FrameType) -> tuple[dict[str, Any] | None, Lockish | None]:
    line = source_line(frame.f_code.co_filename, frame.f_lineno or 0)
    if not line:
        return None, None
    for pattern in (_WITH_LINE, _ACQUIRE_LINE):
        match = pattern.search(line)
        if match is None:
            continue
        lock = _as_lock(_resolve(match[1], frame), match[1])
        if lock is not None:
            return {"kind": lock.kind, "what": lock.describe(), "object_id": id(lock.obj)}, lock
    if re.search(r"\bsleep\(", line):
        return {"kind": "sleep", "what": "time.sleep"}, None
    if re.search(r"\b(select|poll|epoll|kqueue)\b", line):
        return {"kind": "select", "what": "select / poll"}, None
    if _IO_CALLS.search(line):
        return {"kind": "io", "what": "I/O: " + line.strip()[:80]}, None
    return None, None


def analyze(stacks: dict[int, list[FrameType]], running: set[int],
            names: dict[int, str]) -> Analysis:
    """Analyze live frames (innermost first) of every thread; ``running`` ones wait on nothing."""
    waits: dict[int, dict[str, Any]] = {}
    wanted: dict[int, Lockish] = {}
    for ident, frames in stacks.items():
        if ident in running or not frames:
            continue
        # Stdlib wait points first: their own source lines (``waiter.acquire()`` inside
        # Condition.wait) would otherwise read as a user's lock.
        lock = None
        wait = _stdlib_wait(frames)
        if wait is None:
            wait, lock = _source_wait(frames[0])
        if wait is None:
            wait = {"kind": "unknown", "what": "in C code called from here"}
        if lock is not None:
            wanted[ident] = lock
            owner = lock.owner()
            if owner is not None:
                wait["owner"] = owner
        waits[ident] = wait

    holds: dict[int, list[dict[str, Any]]] = {}
    held_by: dict[int, int] = {}  # id(lock) -> holder ident
    wanted_ids = {id(lock.obj) for lock in wanted.values()}
    budget = _Budget(_PARSES_PER_DUMP)
    for ident, frames in stacks.items():
        for frame in frames:
            for block in _blocks_for(frame.f_code, budget):
                if not block.body_first <= (frame.f_lineno or 0) <= block.end:
                    continue
                lock = _as_lock(_resolve(block.expr, frame), block.expr)
                if lock is None:
                    continue
                holds.setdefault(ident, []).append(
                    {"what": lock.describe(), "object_id": id(lock.obj)})
                if id(lock.obj) in wanted_ids:
                    held_by.setdefault(id(lock.obj), ident)
    for ident, lock in wanted.items():
        wait = waits[ident]
        if "owner" not in wait and id(lock.obj) in held_by and held_by[id(lock.obj)] != ident:
            wait["owner"] = held_by[id(lock.obj)]
    for wait in waits.values():
        if wait.get("owner") is not None:
            wait["owner_name"] = names.get(wait["owner"])
    return Analysis(waits, holds, _cycles(waits, names))


def _cycles(waits: dict[int, dict[str, Any]], names: dict[int, str]) -> list[dict[str, Any]]:
    edges = {ident: w["owner"] for ident, w in waits.items()
             if w.get("owner") is not None and w["owner"] != ident}
    found: list[dict[str, Any]] = []
    seen: set[frozenset[int]] = set()
    for start in edges:
        path: list[int] = []
        node: int | None = start
        while node is not None and node not in path:
            path.append(node)
            node = edges.get(node)
        if node is None:
            continue
        cycle = path[path.index(node):]
        key = frozenset(cycle)
        if key in seen:
            continue
        seen.add(key)
        first = cycle.index(min(cycle))
        cycle = cycle[first:] + cycle[:first]
        steps = [f"{names.get(t, t)!r} waits for {waits[t]['what']}" + (
                 "" if waits[t]["kind"] == "join" else
                 f" held by {names.get(edges[t], edges[t])!r}") for t in cycle]
        found.append({"threads": cycle, "names": [names.get(t) for t in cycle],
                      "locks": [waits[t]["what"] for t in cycle],
                      "description": "deadlock: " + "; ".join(steps)})
    return found
