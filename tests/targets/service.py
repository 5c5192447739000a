"""A small threaded service to debug with pdb.

* ``worker``: a loop counting in ``i`` (written to $COUNTER_FILE), one step per 10 ms.
* an HTTP server (``ThreadingHTTPServer``): ``GET /PATH`` answers 200 ``hello PATH``;
  ``GET /crash`` starts a thread ``crasher`` that dies of ``ValueError('boom 42')``;
  ``GET /log`` logs a line through the root logger's handler (``Marked``), ``GET /print``
  prints one to ``sys.stderr`` as it is at that moment;
  ``GET /spawn`` runs a Python child and answers what it saw of debuggers.
Prints ``READY {"pid", "http", "tcp"}``; runs until stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prodbug

COUNTER = os.environ.get("COUNTER_FILE")


def work() -> None:
    i = 0
    while True:
        i += 1
        if COUNTER:
            with open(COUNTER + ".tmp", "w") as f:
                f.write(str(i))
            os.replace(COUNTER + ".tmp", COUNTER)
        time.sleep(0.01)


def crash(amount: int) -> None:
    raise ValueError(f"boom {amount}")


class Marked(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # LOG-BREAK: a thread here holds this handler's lock


def spawn_child() -> str:
    """What a Python child of this service sees: pydevd loaded? PYDEVD_* variables?"""
    code = ("import os, sys; print(sorted(m for m in sys.modules if 'pydevd' in m)[:3], "
            "sorted(k for k in os.environ if k.startswith(('PYDEVD', 'DEBUGPY'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    return out.stdout.strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        if path == "/crash":
            threading.Thread(target=crash, args=(42,), name="crasher").start()
        elif path == "/log":
            logging.getLogger("app").warning("a request logged this")
        elif path == "/print":
            print("a request printed this", file=sys.stderr, flush=True)
        elif path == "/spawn":
            path = spawn_child()
        body = f"hello {path}".encode()  # BREAK: the line after the request path is known
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    # The agent never prints; this service shows its warnings, for the tests' diagnostics.
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s",
                        handlers=[Marked()])
    threading.Thread(target=work, name="worker", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    agent = prodbug.start_agent()
    host, port = server.server_address[:2]
    # One write: the log lines of other threads must not land inside the READY line.
    sys.stdout.write("READY " + json.dumps({"pid": os.getpid(), "http": f"http://{host}:{port}",
                                            "tcp": agent.tcp_endpoint}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
