"""A host that runs close to its file-descriptor limit, and notices when open() fails.

* ``$FD_SOFT_LIMIT`` (default 1024) becomes RLIMIT_NOFILE's soft limit before the agent
  starts; with ``$FREE_FDS`` set, the host then holds descriptors until only that many
  are free.
* thread ``opener`` opens and closes /dev/null in a loop and counts what fails with
  EMFILE, and the highest descriptor number it got (how many were in use at the peak).
* the agent's warnings are printed as ``LOG ...`` lines.

stdin, one command per line: ``count`` prints ``COUNT {"opened", "emfile", "max_fd"}``;
EOF exits. Prints ``READY {"pid", "tcp", "ipc", "free"}``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import sys
import threading
import time

import prodbug

stats = {"opened": 0, "emfile": 0, "max_fd": 0}


def opener() -> None:
    while True:
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                stats["emfile"] += 1
        else:
            stats["max_fd"] = max(stats["max_fd"], fd)
            os.close(fd)
            stats["opened"] += 1
        time.sleep(0.001)


def free_fds() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - len(os.listdir("/proc/self/fd"))


def main() -> None:
    soft = int(os.environ.get("FD_SOFT_LIMIT", "1024"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="LOG %(name)s %(levelname)s %(message)s")
    agent = prodbug.start_agent()
    held = []
    wanted = os.environ.get("FREE_FDS")
    if wanted:
        while free_fds() > int(wanted):
            held.append(os.open(os.devnull, os.O_RDONLY))
    threading.Thread(target=opener, name="opener", daemon=True).start()
    sys.stdout.write("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint,
                                            "ipc": agent.ipc_endpoint,
                                            "free": free_fds()}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() == "count":
            sys.stdout.write("COUNT " + json.dumps(stats) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
