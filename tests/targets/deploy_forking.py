"""A pre-fork server that forks on request, while an operator may be debugging it.

Thread ``parent-worker`` runs ``parent_loop``. Each ``fork`` line on stdin forks a child
from the main thread; the child starts thread ``child-worker`` (``child_loop``, whose
loop starts after the report), waits until its own agent is registered, and reports what
it inherited: the fork's thread's
trace function, ``threading.gettrace()``, the ``sys.monitoring`` debugger tool (3.12+),
whether pydevd's modules came along. The parent prints ``FORKED {json}`` with it. Prints
``READY {"pid"}``. Children exit when the parent does; the parent exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import prodbug
from prodbug.agent import current_agent


def parent_loop() -> None:
    while True:
        time.sleep(0.05)


def child_loop(go: threading.Event) -> None:
    go.wait()
    while True:
        time.sleep(0.05)  # CHILD-LINE: only a child runs it


def inherited() -> dict[str, object]:
    monitoring = getattr(sys, "monitoring", None)
    return {
        "pid": os.getpid(),
        "settrace": repr(sys.gettrace()) if sys.gettrace() is not None else None,
        "threading_settrace": repr(threading.gettrace()) if threading.gettrace() else None,
        "monitoring_tool": monitoring.get_tool(monitoring.DEBUGGER_ID) if monitoring else None,
        "pydevd_loaded": "pydevd" in sys.modules,
    }


def child(report: int, parent_alive: int) -> None:
    go = threading.Event()  # child_loop's line runs only once the report is out
    threading.Thread(target=child_loop, args=(go,), name="child-worker", daemon=True).start()
    entry = Path(os.environ["PRODBUG_RUNTIME_DIR"]) / f"{os.getpid()}.json"
    deadline = time.monotonic() + 30
    while not (current_agent() is not None and entry.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    facts = inherited()
    facts["agent"] = current_agent() is not None
    os.write(report, json.dumps(facts).encode())
    os.close(report)
    go.set()
    os.read(parent_alive, 1)  # EOF when the parent exits
    agent = current_agent()
    if agent is not None:
        agent.stop()
    os._exit(0)


def main() -> None:
    prodbug.start_agent()
    threading.Thread(target=parent_loop, name="parent-worker", daemon=True).start()
    alive_r, alive_w = os.pipe()
    children = []
    print("READY " + json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            os.close(alive_w)
            child(report_w, alive_r)
        os.close(report_w)
        with os.fdopen(report_r) as f:
            facts = f.read()
        children.append(pid)
        print("FORKED " + facts, flush=True)
    os.close(alive_w)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
