"""Threads stuck in the ways "why is it stuck?" must explain.

* ``alpha`` and ``beta``: a lock-order deadlock on two RLocks (``LOCK_A``, ``LOCK_B``).
* ``holder`` sleeps inside ``with LEDGER:`` (a plain Lock); ``payer`` waits at it.
* ``secrets``: a frame with a ``password``, an ``api_token`` and an object whose
  ``__repr__`` sleeps 60 s, parked in ``time.sleep``.
* ``consumer`` waits on an empty ``queue.Queue``; ``flag-waiter`` on a ``threading.Event``.
Prints ``READY`` when the deadlock has formed.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

import prodbug

LOCK_A = threading.RLock()
LOCK_B = threading.RLock()
LEDGER = threading.Lock()
JOBS: queue.Queue[int] = queue.Queue()
FLAG = threading.Event()
both_hold_one = threading.Barrier(2)


class SlowRepr:
    def __init__(self) -> None:
        self.size = 3

    def __repr__(self) -> str:
        time.sleep(60)
        return "never"


def alpha() -> None:
    with LOCK_A:
        both_hold_one.wait()
        with LOCK_B:
            pass


def beta() -> None:
    with LOCK_B:
        both_hold_one.wait()
        with LOCK_A:
            pass


def hold_ledger() -> None:
    with LEDGER:
        while True:
            time.sleep(0.5)


def pay() -> None:
    with LEDGER:
        pass


def keep_secrets() -> None:
    password = "hunter2"
    api_token = "tok-123"
    slow = SlowRepr()
    user = {"name": "ada", "session_id": "s-1"}
    while True:
        time.sleep(0.5 + 0 * len(password + api_token + user["name"]) * slow.size)


def consume() -> None:
    JOBS.get()


def wait_flag() -> None:
    FLAG.wait()


def main() -> None:
    threading.Thread(target=alpha, name="alpha", daemon=True).start()
    threading.Thread(target=beta, name="beta", daemon=True).start()
    threading.Thread(target=hold_ledger, name="holder", daemon=True).start()
    while not LEDGER.locked():
        time.sleep(0.01)
    threading.Thread(target=pay, name="payer", daemon=True).start()
    threading.Thread(target=keep_secrets, name="secrets", daemon=True).start()
    threading.Thread(target=consume, name="consumer", daemon=True).start()
    threading.Thread(target=wait_flag, name="flag-waiter", daemon=True).start()
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
