"""A pre-fork server in miniature: the parent starts the agent, then forks a worker.

Prints ``READY {"pid": PARENT, "child": CHILD, ...}`` once the child's agent is registered.
Both exit when stdin closes; the parent reaps the child.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import prodbug
from prodbug.agent import current_agent


def child_loop() -> None:
    while True:
        time.sleep(0.5)


def main() -> None:
    agent = prodbug.start_agent()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        threading.Thread(target=child_loop, name="child-worker", daemon=True).start()
        deadline = time.monotonic() + 20
        while (current_agent() is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        mine = current_agent()
        os.write(write_fd, json.dumps(
            {"ipc": mine.ipc_endpoint if mine else None,
             "tcp": mine.tcp_endpoint if mine else None}).encode())
        os.close(write_fd)
        sys.stdin.read()
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        child_facts = json.loads(f.read())
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint, "child": child,
                                 "child_ipc": child_facts["ipc"],
                                 "child_tcp": child_facts["tcp"]}), flush=True)
    sys.stdin.read()
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
