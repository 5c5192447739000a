"""A target with a known leak, and objects that run code if anyone looks at them wrongly.

``leak_some()`` runs 3000 times before the target is ready, then a ``leaker`` thread
calls it every millisecond; the line marked ``# LEAK`` (called from ``# CALL``) appends a
``bytearray(1000)`` to a global list. ``Trap`` instances (a ``__class__`` property, a
``__sizeof__``, a metaclass with ``__eq__``/``__hash__``) and a ``list`` subclass with its
own ``__sizeof__`` count in ``RAN`` every time their code runs.
A line ``status`` on stdin prints ``STATUS {json}``: whether tracemalloc traces, what
``RAN`` counted, how many objects leaked. EOF ends the target.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc

import prodbug

LEAKED: list[bytearray] = []
RAN = [0]


def leak_some() -> None:
    LEAKED.append(bytearray(1000))  # LEAK


def leaker() -> None:
    while True:
        leak_some()  # CALL
        time.sleep(0.001)


class Meta(type):
    def __eq__(cls, other: object) -> bool:
        RAN[0] += 1
        return type.__eq__(cls, other)

    def __hash__(cls) -> int:
        RAN[0] += 1
        return type.__hash__(cls)


class Trap(metaclass=Meta):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        RAN[0] += 1
        return Trap

    def __sizeof__(self) -> int:
        RAN[0] += 1
        return 1


class TrapList(list):  # type: ignore[type-arg]
    def __sizeof__(self) -> int:
        RAN[0] += 1
        return 1


TRAPS = [Trap() for _ in range(100)] + [TrapList([1, 2]) for _ in range(100)]


def main() -> None:
    for _ in range(3000):
        leak_some()
    threading.Thread(target=leaker, name="leaker", daemon=True).start()
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "ipc": agent.ipc_endpoint,
                                 "tcp": agent.tcp_endpoint}), flush=True)
    for line in sys.stdin:
        if line.strip() == "status":
            print("STATUS " + json.dumps({"tracing": tracemalloc.is_tracing(), "ran": RAN[0],
                                          "leaked": len(LEAKED)}), flush=True)


if __name__ == "__main__":
    main()
