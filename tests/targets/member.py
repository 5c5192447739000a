"""A process of a service: the agent from ``PRODBUG_*``, thread ``idle`` blocked in
``idle_here`` (the same stack in every process) and thread ``ticker`` running Python lines.

Prints ``READY {"pid", "role", "tcp", "ipc", "service"}``; ``role`` on stdin prints
``ROLE role tcp_endpoint``; EOF exits.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import prodbug


def idle_here(stop: threading.Event) -> None:
    stop.wait()


def tick(stop: threading.Event) -> None:
    ticks = 0
    while not stop.wait(0.05):
        ticks += 1


def main() -> None:
    agent = prodbug.start_agent()
    stop = threading.Event()
    threading.Thread(target=idle_here, args=(stop,), name="idle", daemon=True).start()
    threading.Thread(target=tick, args=(stop,), name="ticker", daemon=True).start()
    print("READY " + json.dumps({"pid": os.getpid(), "role": agent.role,
                                 "tcp": agent.tcp_endpoint, "ipc": agent.ipc_endpoint,
                                 "service": agent.service}), flush=True)
    for line in sys.stdin:
        if line.strip() == "role":
            print("ROLE", agent.role, agent.tcp_endpoint, flush=True)
    stop.set()


if __name__ == "__main__":
    main()
