"""A host with signal handlers of its own, whose agent it freezes on request.

Before the agent starts, the host takes the first two signals the agent would choose:
a Python handler on SIGRTMIN+13 (it prints ``APP HANDLER``) and its own
``faulthandler.register`` on SIGRTMIN+12 (into ``$APP_DUMP``). Prints ``READY {"pid"}``.
On ``freeze`` from stdin, thread ``fb-frozen`` holds the GIL in a C read of stdin
(``FROZEN`` is printed once it does) until the next line arrives. Exits when stdin closes.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading

from fb_gil import hold_the_gil

import prodbug


def app_handler(signum: int, frame: object) -> None:
    print(f"APP HANDLER {signum}", flush=True)


def main() -> None:
    signal.signal(signal.SIGRTMIN + 13, app_handler)
    app_dump = open(os.environ["APP_DUMP"], "w")  # noqa: SIM115  (faulthandler keeps it)
    faulthandler.register(signal.SIGRTMIN + 12, file=app_dump, all_threads=True)
    prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "freeze":
            frozen = threading.Thread(target=hold_the_gil, args=(0, b"FROZEN\n"),
                                      name="fb-frozen")
            frozen.start()
            frozen.join()


if __name__ == "__main__":
    main()
