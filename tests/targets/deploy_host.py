"""A host whose only prodbug line is ``import prodbug.autostart`` (PRODBUG_* decide).

Its log goes to stdout. Thread ``deploy-worker`` runs ``deploy_loop``. Prints ``READY
{"pid", "before", "after", "tcp"}``: whether an agent was already running before its own
import (a ``sitecustomize`` bootstrap started it), whether one runs after, and its TCP
endpoint. Exits when stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(message)s")

from prodbug.agent import current_agent  # noqa: E402

before = current_agent() is not None

import prodbug.autostart  # noqa: E402, F401


def deploy_loop() -> None:
    while True:
        time.sleep(0.05)


def main() -> None:
    threading.Thread(target=deploy_loop, name="deploy-worker", daemon=True).start()
    agent = current_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "before": before,
                                 "after": agent is not None,
                                 "tcp": agent.tcp_endpoint if agent else None}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
