"""A service started with ``prodbug run`` (no prodbug import of its own).

It starts a worker with each multiprocessing start method (fork, forkserver, spawn), a
long-lived ``python -c`` child, and runs ``python -m pip --version``; then prints
``READY {"pid", "workers": {METHOD: PID}, "helper": PID, "helper_says": ..., "pip": ...}``
and runs until its stdin closes. The workers and the helper end with it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

HELPER = ("import json, sys, threading; print(json.dumps({'prodbug': 'prodbug' in sys.modules, "
          "'threads': [t.name for t in threading.enumerate()]}), flush=True); sys.stdin.read()")


def work(stop: object) -> None:
    stop.wait()  # type: ignore[attr-defined]


def main() -> None:
    workers = {}
    stops = []
    for method in ("fork", "forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        stop = ctx.Event()
        proc = ctx.Process(target=work, args=(stop,), name=f"{method}-worker")
        proc.start()
        workers[method] = proc
        stops.append(stop)
    helper = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None
    helper_says = json.loads(helper.stdout.readline())
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                         text=True, check=False)
    print("READY " + json.dumps({
        "pid": os.getpid(), "workers": {m: p.pid for m, p in workers.items()},
        "helper": helper.pid, "helper_says": helper_says,
        "pip": [pip.returncode, pip.stdout, pip.stderr]}), flush=True)
    sys.stdin.read()
    helper.communicate("")
    for stop in stops:
        stop.set()
    for proc in workers.values():
        proc.join(10)


if __name__ == "__main__":
    main()
