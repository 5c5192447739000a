"""Many agents cheaply: forks N children (``$FLEET_SIZE``), each runs its own agent from
``PRODBUG_*`` (a TCP port of its own) with a thread ``idle`` blocked in ``idle_here``.

Prints ``READY {"pid", "agents": [{"pid", "tcp"}, ...]}``; on stdin EOF ends them all.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import prodbug


def idle_here(stop: threading.Event) -> None:
    stop.wait()


def child(write_fd: int) -> None:
    agent = prodbug.start_agent()
    stop = threading.Event()
    threading.Thread(target=idle_here, args=(stop,), name="idle", daemon=True).start()
    os.write(write_fd, (json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint})
                        + "\n").encode())
    signal.sigwait({signal.SIGTERM})
    os._exit(0)


def main() -> None:
    size = int(os.environ.get("FLEET_SIZE", "4"))
    read_fd, write_fd = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pids = []
    for _ in range(size):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            child(write_fd)
        pids.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(write_fd)
    agents = []
    with os.fdopen(read_fd) as lines:
        for _ in range(size):
            agents.append(json.loads(lines.readline()))
    print("READY " + json.dumps({"pid": os.getpid(), "agents": agents}), flush=True)
    sys.stdin.read()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
