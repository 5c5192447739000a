"""Threads that reach every bound of a stack dump, each blocked before ``READY``.

* ``deep``: recursion ``DEPTH`` frames deep (more than the agent keeps), then blocked on
  ``BLOCK`` (a Lock the main thread holds for ever);
* ``longline``: blocked on ``BLOCK`` at a source line longer than the agent shows;
* ``hoard-0`` .. ``hoard-11``: each blocked on ``BLOCK`` in a frame with 31 locals whose
  values are long strings (200 characters shown of each): together more than a dump's
  budget for locals (64 KiB), which runs out in the middle of one of these frames;
* ``--tasks N``: an event loop in ``loop-thread`` with N tasks awaiting one Event;
* ``--orphan-cwd``: the process's working directory is removed once the agent runs
  (as a deploy that replaced a release directory leaves a service);
* ``--raising-getcwd``: the host replaces ``os.getcwd`` with one that raises
  ``RuntimeError`` (as monkey-patching libraries replace stdlib functions), something
  the agent's ``info`` does not plan for.
Prints ``READY {json}`` with the pid, the agent's TCP endpoint and ``long_line`` (the
line number of ``longline``'s wait).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import linecache
import os
import sys
import tempfile
import threading

import prodbug

DEPTH = 250
HOARDERS = 12
BLOCK = threading.Lock()
BLOCK.acquire()
#: Threads that are about to block on BLOCK; each waits until all are there.
blocked = threading.Semaphore(0)


def deep(n: int) -> None:
    if n > 1:
        deep(n - 1)
        return
    blocked.release()
    BLOCK.acquire()


def longline() -> None:
    blocked.release()
    BLOCK.acquire()  # this line is long on purpose: a dump shows at most 200 characters of it and marks the cut, so that nobody takes the rest for absent; padding padding padding padding padding padding  # noqa: E501


def hoard() -> None:
    big = "x" * 1000
    (v00, v01, v02, v03, v04, v05, v06, v07, v08, v09, v10, v11, v12, v13, v14, v15, v16,  # noqa: RUF059
     v17, v18, v19, v20, v21, v22, v23, v24, v25, v26, v27, v28, v29) = [big] * 30  # noqa: RUF059
    blocked.release()
    BLOCK.acquire()


async def serve(count: int, started: threading.Event) -> None:
    event = asyncio.Event()
    tasks = [asyncio.create_task(event.wait(), name=f"waiter-{i}") for i in range(count)]
    await asyncio.sleep(0)
    started.set()
    await asyncio.gather(*tasks)


def at_block(ident: int | None) -> bool:
    """Whether the thread's innermost frame is at its ``BLOCK.acquire()`` (blocked there:
    nothing else is left for it to run)."""
    frame = sys._current_frames().get(ident or 0)
    return frame is not None and "BLOCK.acquire()" in linecache.getline(
        frame.f_code.co_filename, frame.f_lineno or 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=0)
    parser.add_argument("--orphan-cwd", action="store_true")
    parser.add_argument("--raising-getcwd", action="store_true")
    args = parser.parse_args()
    threads = [threading.Thread(target=deep, args=(DEPTH,), name="deep", daemon=True),
               threading.Thread(target=longline, name="longline", daemon=True)]
    threads += [threading.Thread(target=hoard, name=f"hoard-{i}", daemon=True)
                for i in range(HOARDERS)]
    for thread in threads:
        thread.start()
    for _ in threads:
        blocked.acquire()
    if args.tasks:
        started = threading.Event()
        threading.Thread(target=lambda: asyncio.run(serve(args.tasks, started)),
                         name="loop-thread", daemon=True).start()
        started.wait()
    agent = prodbug.start_agent()
    if args.orphan_cwd:
        gone = tempfile.mkdtemp(prefix="pb-cwd-")
        os.chdir(gone)
        os.rmdir(gone)
    if args.raising_getcwd:
        def getcwd() -> str:
            raise RuntimeError("os.getcwd is not available in this worker")
        os.getcwd = getcwd
    while not all(at_block(t.ident) for t in threads):
        BLOCK.acquire(timeout=0.01)  # never succeeds: it is held; a short wait
    line = longline.__code__.co_firstlineno + 2
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint,
                                 "long_line": line}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
