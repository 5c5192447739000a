"""A target with N named threads, each blocked in a function the tests can predict.

Thread ``worker-I`` runs ``KINDS[I % 3]``: ``sleeper`` (time.sleep), ``lock_waiter``
(a Lock that is never released) or ``selector`` (select on a pipe that stays empty).
A ``counter`` thread writes an ever-growing number to $COUNTER_FILE, so tests can see
the host keep working. ``--spin`` adds a thread spinning in pure Python; with $RATE_FILE
it appends its loop rate to that file every 0.1 s (scripts/bench).
Prints ``READY {json}`` once every worker is blocked in its system call (not merely
about to call it), as /proc/self/task/TID/syscall shows.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import threading
import time

import prodbug

held = threading.Lock()
held.acquire()
read_end, _write_end = os.pipe()


def sleeper(ready: threading.Event) -> None:
    ready.set()
    while True:
        time.sleep(0.5)


def lock_waiter(ready: threading.Event) -> None:
    ready.set()
    held.acquire()


def selector(ready: threading.Event) -> None:
    ready.set()
    select.select([read_end], [], [])


def spinner(ready: threading.Event) -> None:
    ready.set()
    rate_file = os.environ.get("RATE_FILE")  # scripts/bench: how much the host gets done
    n = 0
    if not rate_file:
        while True:
            n += 1
    mark, start = 0, time.perf_counter()
    while True:
        n += 1
        if n % 100_000 == 0:
            now = time.perf_counter()
            if now - start >= 0.1:
                with open(rate_file, "a") as f:
                    f.write(f"{now} {(n - mark) / (now - start)}\n")
                mark, start = n, now


def blocked(thread: threading.Thread) -> bool:
    """The kernel's word: the thread waits inside a system call."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            return not f.read().startswith("running")
    except OSError:
        return True  # no procfs: the event is all we have


def counter(path: str) -> None:
    n = 0
    while True:
        n += 1
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(path + ".tmp", path)
        time.sleep(0.01)


KINDS = [sleeper, lock_waiter, selector]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=5)
    parser.add_argument("--spin", action="store_true")
    parser.add_argument("--no-agent", action="store_true")
    opts = parser.parse_args()
    events, workers = [], []
    for i in range(opts.threads):
        ev = threading.Event()
        worker = threading.Thread(target=KINDS[i % 3], args=(ev,), name=f"worker-{i}",
                                  daemon=True)
        worker.start()
        events.append(ev)
        workers.append(worker)
    if opts.spin:
        ev = threading.Event()
        threading.Thread(target=spinner, args=(ev,), name="spinner", daemon=True).start()
        events.append(ev)
    if os.environ.get("COUNTER_FILE"):
        threading.Thread(target=counter, args=(os.environ["COUNTER_FILE"],), name="counter",
                         daemon=True).start()
    for ev in events:
        ev.wait()
    deadline = time.monotonic() + 30
    while not all(blocked(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.005)
    facts = {"pid": os.getpid()}
    if not opts.no_agent:
        agent = prodbug.start_agent()
        facts.update(ipc=agent.ipc_endpoint, tcp=agent.tcp_endpoint)
    print("READY " + json.dumps(facts), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
