"""For scripts/bench: a thread spinning in pure Python that reports its speed.

``spin`` (a function call per iteration) writes its loop rate (iterations per second,
over the last 0.25 s) to $RATE_FILE; ``ticker`` starts a short-lived thread running
``tick()`` every 50 ms, a line that ``--break`` can catch on any Python version.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import prodbug

RATE_FILE = os.environ["RATE_FILE"]


def bump(n: int) -> int:
    return n + 1


def spin() -> None:
    n = 0
    mark, start = 0, time.perf_counter()
    while True:
        n = bump(n)  # a call per iteration, as real code makes: what call tracing costs
        if n % 200_000 == 0:
            now = time.perf_counter()
            if now - start >= 0.25:
                with open(RATE_FILE, "a") as f:
                    f.write(f"{now} {(n - mark) / (now - start)}\n")
                mark, start = n, now


def tick() -> int:
    return 1 + 1


def ticker() -> None:
    while True:
        try:
            threading.Thread(target=tick, name="tick").start()
        except RuntimeError:  # interpreter shutting down
            return
        time.sleep(0.05)


def main() -> None:
    threading.Thread(target=spin, name="spin", daemon=True).start()
    threading.Thread(target=ticker, name="ticker", daemon=True).start()
    prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
