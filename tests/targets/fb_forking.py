"""A parent with an agent forks a child whose agent it then freezes.

Thread ``parent-only`` (``parent_only``) runs in the parent alone. The child starts
thread ``child-worker`` (``child_worker``), waits until its own agent is registered, tells
the parent its pid, and then holds the GIL in a C read until the parent exits
(``CHILD FROZEN`` is printed once it does); it stops its agent and exits. The parent
prints ``READY {"pid", "child"}`` and exits, reaping the child, when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from fb_gil import hold_the_gil

import prodbug
from prodbug.agent import current_agent


def parent_only() -> None:
    while True:
        time.sleep(0.05)


def child_worker() -> None:
    while True:
        time.sleep(0.05)


def child(report: int, parent_alive: int) -> None:
    threading.Thread(target=child_worker, name="child-worker", daemon=True).start()
    entry = Path(os.environ["PRODBUG_RUNTIME_DIR"]) / f"{os.getpid()}.json"
    deadline = time.monotonic() + 30
    while not (current_agent() is not None and entry.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(report, str(os.getpid()).encode())
    os.close(report)
    hold_the_gil(parent_alive, b"CHILD FROZEN\n")  # until EOF: the parent exited
    agent = current_agent()
    if agent is not None:
        agent.stop()
    os._exit(0)


def main() -> None:
    prodbug.start_agent()
    threading.Thread(target=parent_only, name="parent-only", daemon=True).start()
    report_r, report_w = os.pipe()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(alive_w)
        child(report_w, alive_r)
    os.close(report_w)
    os.close(alive_r)
    with os.fdopen(report_r) as f:
        child_pid = int(f.read())
    # One write: the child's line may come at any moment, never inside this one.
    os.write(1, ("READY " + json.dumps({"pid": os.getpid(), "child": child_pid}) + "\n").encode())
    sys.stdin.read()
    os.close(alive_w)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
