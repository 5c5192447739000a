"""For scripts/bench_probes.py: a thread spinning in pure Python that reports its speed.

``spin`` calls ``bump`` each iteration and ``hot`` every EVERY iterations, EVERY chosen at
start so that ``hot`` runs about $HOT_RATE (default 100,000) times a second; ``cold`` is
never called, and the ``# PROBE-UNHIT`` line of the loop itself is never reached. Every
0.25 s a line goes to $RATE_FILE: the time, the loop's iterations per second, and its
iterations per second of its own thread's CPU time (what other processes on a busy machine
take from it does not count there).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import prodbug

RATE_FILE = os.environ["RATE_FILE"]
HOT_RATE = float(os.environ.get("HOT_RATE", "100000"))


def bump(n: int) -> int:
    return n + 1


def hot(n: int) -> int:
    return n  # PROBE-HOT


def cold(n: int) -> int:
    return -n  # PROBE-COLD


def calibrate() -> int:
    """Iterations per ``hot`` call for HOT_RATE calls a second."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3:
        for _ in range(10_000):  # the loop of spin(), less the rare branches
            n = bump(n)
            if n % 1_000_000_000 == 0:
                hot(n)
            if n < 0:
                n = cold(n)
            if n % 200_000 == 0:
                pass
    return max(1, int(n / (time.perf_counter() - start) / HOT_RATE))


def spin(every: int) -> None:
    n = 0
    mark, start, cpu = 0, time.perf_counter(), time.thread_time()
    while True:
        n = bump(n)
        if n % every == 0:
            hot(n)
        if n < 0:
            n = cold(n)  # PROBE-UNHIT
        if n % 200_000 == 0:
            now = time.perf_counter()
            if now - start >= 0.25:
                used = time.thread_time()
                with open(RATE_FILE, "a") as f:
                    f.write(f"{now} {(n - mark) / (now - start)} "
                            f"{(n - mark) / max(used - cpu, 1e-9)}\n")
                mark, start, cpu = n, now, used


def main() -> None:
    every = calibrate()
    threading.Thread(target=spin, args=(every,), name="spin", daemon=True).start()
    prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "every": every}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
