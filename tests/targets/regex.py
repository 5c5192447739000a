"""A thread that holds the GIL in one long C call: a catastrophic regex (at least
$REGEX_SECONDS, default 10; at most twice that on an idle machine).

Prints ``READY``, then ``REGEX STARTED`` just before the regex takes the GIL, and
``REGEX DONE`` after it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time

import prodbug

PATTERN = re.compile(r"(a+)+$")


def _took(n: int) -> float:
    start = time.perf_counter()
    PATTERN.match("a" * n + "b")
    return max(time.perf_counter() - start, 1e-6)


def size_for(seconds: float) -> int:
    """The input length whose match takes at least about ``seconds`` here (the time doubles
    per 'a'). From the quickest of three samples: a busy machine only slows a sample down,
    which would make the match too short to be seen."""
    took = min(_took(18) for _ in range(3))
    return 18 + max(0, math.ceil(math.log2(seconds / took)))


def catastrophic(n: int) -> None:
    print("REGEX STARTED", flush=True)
    PATTERN.match("a" * n + "b")
    print("REGEX DONE", flush=True)


def main() -> None:
    n = size_for(float(os.environ.get("REGEX_SECONDS", "10")))
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint}), flush=True)
    sys.stdin.readline()  # the test says when
    threading.Thread(target=catastrophic, args=(n,), name="regex-worker", daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
