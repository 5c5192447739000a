"""A target for the profiler: one thread that burns CPU, one that mostly sleeps.

Thread ``hot`` runs ``hot_loop()``, which calls ``burn()`` (a pure-Python sum) forever:
``burn`` is where its samples land. Thread ``sleepy`` runs ``nap()`` (time.sleep, waking
every 0.2 s). Prints ``READY {json}`` once both run and the agent listens; then each line
read from stdin is answered with ``THREADS [names of the threads alive]``; exits when
stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import prodbug


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def hot_loop(ready: threading.Event) -> None:
    ready.set()
    while True:
        burn(2000)


def nap(ready: threading.Event) -> None:
    ready.set()
    while True:
        time.sleep(0.2)


def main() -> None:
    events = []
    for name, function in (("hot", hot_loop), ("sleepy", nap)):
        ready = threading.Event()
        threading.Thread(target=function, args=(ready,), name=name, daemon=True).start()
        events.append(ready)
    for ready in events:
        ready.wait()
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "ipc": agent.ipc_endpoint,
                                 "tcp": agent.tcp_endpoint}), flush=True)
    for _line in sys.stdin:  # until the test closes our stdin (or kills us)
        names = sorted(thread.name for thread in threading.enumerate())
        print("THREADS " + json.dumps(names), flush=True)


if __name__ == "__main__":
    main()
