"""A service whose names and values carry terminal escape sequences, as a hostile (or just
careless) one may: what ``prodbug`` prints of it must show them, never obey them.

* thread ``evil`` + NASTY runs ``hidden`` + NASTY, from a file named ``evil`` + NASTY ``.py``;
* thread ``parked`` holds locals ``title`` (an xterm title-setting sequence) and ``thing``
  (an object whose class name is NASTY);
* the last argument of ``sys.argv`` is NASTY.
Prints ``READY {json}`` once both threads are parked.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import prodbug

#: Clear screen, set the window title, a right-to-left override, an 8-bit CSI.
NASTY = "\x1b[2J\x1b]0;pwned\x07\u202e\x9b31m"
TITLE = "\x1b]0;pwned\x07"

Pwn = type("Pwn" + NASTY, (), {})


def parked(ready: threading.Event) -> None:
    title = TITLE
    thing = Pwn()
    ready.set()
    while True:
        time.sleep(0.5)
    print(title, thing)  # never reached: keeps both names alive in the frame


_SOURCE = "def hidden(ready):\n    ready.set()\n    while True:\n        time.sleep(0.5)\n"
_namespace: dict[str, Any] = {"time": time}
exec(compile(_SOURCE, f"evil{NASTY}.py", "exec"), _namespace)
hidden = _namespace["hidden"]
_renamed = {"co_name": "hidden" + NASTY}
if sys.version_info >= (3, 11):
    _renamed["co_qualname"] = "hidden" + NASTY
hidden.__code__ = hidden.__code__.replace(**_renamed)


def main() -> None:
    sys.argv.append(NASTY)
    events = []
    for name, func in ((f"evil{NASTY}", hidden), ("parked", parked)):
        ev = threading.Event()
        threading.Thread(target=func, args=(ev,), name=name, daemon=True).start()
        events.append(ev)
    for ev in events:
        ev.wait()
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "ipc": agent.ipc_endpoint}), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
