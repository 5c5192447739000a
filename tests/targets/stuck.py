"""Threads stuck in the ways "why is it stuck?" must explain.

* ``alpha`` and ``beta``: a lock-order deadlock on two RLocks (``LOCK_A``, ``LOCK_B``).
* ``holder`` sleeps inside ``with LEDGER:`` (a plain Lock); ``payer`` waits at it.
* ``secrets``: a frame with a ``password``, an ``api_token`` and an object whose
  ``__repr__`` sleeps 60 s, parked in ``time.sleep``.
* ``consumer`` waits on an empty ``queue.Queue``; ``flag-waiter`` on a ``threading.Event``.
* ``joiner`` joins ``gatekeeper`` inside ``with GATE:`` while ``gatekeeper`` waits at
  ``with GATE:``: a deadlock through a join.
* One thread per other wait kind of docs/stacks.md: a Semaphore, a Barrier, a Condition,
  a Future, a socket accept, a recv, a select, a child process, and a Lock taken in a way
  the agent cannot name.
Prints ``READY`` when every thread is blocked where it stays (its innermost frame there).
"""

from __future__ import annotations

import json
import linecache
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

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
    history, note, nested = list(range(1000)), "n" * 5000, [[[["deep"]]]]  # noqa: F841
    while True:
        time.sleep(0.5 + 0 * len(password + api_token + user["name"]) * slow.size)


def consume() -> None:
    JOBS.get()


def wait_flag() -> None:
    FLAG.wait()


GATE = threading.Lock()
gate_taken = threading.Event()
SEMAPHORE = threading.Semaphore(0)
LONE = threading.Barrier(2)  # one party waits for a second that never comes
CONDITION = threading.Condition()
FUTURE: Future[None] = Future()
LISTENER = socket.create_server(("127.0.0.1", 0))
PEER, _OTHER_END = socket.socketpair()
PIPE_READ, _PIPE_WRITE = os.pipe()
MUTE = [threading.Lock()]
MUTE[0].acquire()


def gatekeeper() -> None:
    gate_taken.wait()
    with GATE:
        pass


def joiner(other: threading.Thread) -> None:
    with GATE:
        gate_taken.set()
        other.join()


def wait_semaphore() -> None:
    SEMAPHORE.acquire()


def wait_barrier() -> None:
    LONE.wait()


def wait_condition() -> None:
    with CONDITION:
        CONDITION.wait()


def wait_future() -> None:
    FUTURE.result()


def accept() -> None:
    LISTENER.accept()


def receive() -> None:
    PEER.recv(1)


def select_pipe() -> None:
    select.select([PIPE_READ], [], [])


def wait_child(child: subprocess.Popen[bytes]) -> None:
    child.wait()


def blocked_in_c() -> None:
    MUTE[0].acquire()


#: Thread name -> where it stays blocked: its innermost function, and for the host's own
#: functions the text of the blocking line.
BLOCKED_AT = {
    "alpha": ("alpha", "with LOCK_B:"), "beta": ("beta", "with LOCK_A:"),
    "payer": ("pay", "with LEDGER:"), "consumer": ("wait", None),
    "flag-waiter": ("wait", None), "gatekeeper": ("gatekeeper", "with GATE:"),
    "joiner": ("join", None), "sem-waiter": ("wait", None), "barrier-waiter": ("wait", None),
    "cond-waiter": ("wait", None), "future-waiter": ("wait", None),
    "acceptor": ("accept", None), "receiver": ("receive", "PEER.recv(1)"),
    "selecting": ("select_pipe", "select.select("), "child-waiter": ("_try_wait", None),
    "in-c": ("blocked_in_c", "MUTE[0].acquire()"),
}


def blocked(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return False
    function, text = BLOCKED_AT[thread.name]
    name = frame.f_code.co_name
    if function == "join":  # 3.10-3.12 wait in Thread._wait_for_tstate_lock, 3.13 in join
        return name in ("join", "_wait_for_tstate_lock")
    return name == function and (text is None or text in linecache.getline(
        frame.f_code.co_filename, frame.f_lineno or 0))


def start_more_waits() -> list[threading.Thread]:
    keeper = threading.Thread(target=gatekeeper, name="gatekeeper", daemon=True)
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    threads = [keeper, threading.Thread(target=joiner, args=(keeper,), name="joiner",
                                        daemon=True)]
    for target, name in ((wait_semaphore, "sem-waiter"), (wait_barrier, "barrier-waiter"),
                         (wait_condition, "cond-waiter"), (wait_future, "future-waiter"),
                         (accept, "acceptor"), (receive, "receiver"),
                         (select_pipe, "selecting"), (blocked_in_c, "in-c")):
        threads.append(threading.Thread(target=target, name=name, daemon=True))
    threads.append(threading.Thread(target=wait_child, args=(child,), name="child-waiter",
                                    daemon=True))
    for thread in threads:
        thread.start()
    return threads


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
    start_more_waits()
    waiting = [t for t in threading.enumerate() if t.name in BLOCKED_AT]
    assert len(waiting) == len(BLOCKED_AT)
    while not all(blocked(t) for t in waiting):
        time.sleep(0.01)
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
