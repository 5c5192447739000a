"""A host for snapshots and logpoints.

* ``worker``: a loop over ``step(i)`` about 200 times a second; its locals ``i``,
  ``label`` and ``token`` (a secret by name). It records whether a trace function is set
  in its own thread.
* an HTTP server: ``GET /PATH`` answers 200 ``hello PATH`` (locals ``path``, ``user``);
  ``GET /tracers`` answers JSON: ``worker_traced``, ``threading_trace`` and the
  ``sys.monitoring`` tools in use.
Prints ``READY {"pid", "http"}``; runs until stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prodbug

STATE = {"worker_traced": False}


def step(i: int) -> int:
    return i + 1  # PROBE-STEP


def work() -> None:
    i = 0
    label = "worker-loop"
    token = "s3cret-value"
    while True:
        i = step(i)  # PROBE-LOOP
        STATE["worker_traced"] = sys.gettrace() is not None
        time.sleep(0.005 if label and token else 1)


def tracers() -> dict[str, object]:
    tools = {}
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        tools = {str(n): monitoring.get_tool(n) for n in range(6) if monitoring.get_tool(n)}
    return {"worker_traced": STATE["worker_traced"],
            "threading_trace": threading.gettrace() is not None, "monitoring": tools}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        user = {"name": "ann", "password": "hunter2"}
        body = f"hello {path}".encode()  # PROBE-HTTP
        if path == "/tracers":
            body = json.dumps(tracers()).encode()
        self.send_response(200 if user else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    threading.Thread(target=work, name="worker", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    prodbug.start_agent()
    host, port = server.server_address[:2]
    sys.stdout.write("READY " + json.dumps({"pid": os.getpid(),
                                            "http": f"http://{host}:{port}"}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
