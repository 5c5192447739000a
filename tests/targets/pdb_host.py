"""A service with tracers of its own, for pdb's manners (tests/test_pdb_manners.py).

* ``traced``: a thread that traces itself with ``sys.settrace`` (as coverage's Python
  tracer does) and calls ``step()`` every 10 ms; its tracer counts the lines of ``step``.
* an HTTP server (a thread per request): ``GET /PATH`` prints ``handled PATH`` to
  ``sys.stdout`` and answers 200 ``hello PATH``; ``GET /step`` runs ``step()`` there too;
  ``GET /tracer`` answers, as JSON, the traced thread's line count, whether its trace
  function is still the host's, and the trace functions this request's thread and
  ``threading.settrace`` have; ``GET /global-on`` and ``/global-off`` set and unset a
  host tracer with ``threading.settrace``.
Prints ``READY {"pid", "http"}``; runs until stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import prodbug

STATE: dict[str, Any] = {"lines": 0, "own": None}


def step(n: int) -> int:
    doubled = n * 2  # STEP-LINE
    return doubled


def host_tracer(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "line" and frame.f_code is step.__code__:
        STATE["lines"] += 1
    return host_tracer


def host_global(frame: FrameType, event: str, arg: Any) -> Any:
    return None  # a call tracer: sees every call, asks for no line events


def loop() -> None:
    n = 0
    while True:
        n = step(n + 1) // 2
        STATE["own"] = sys.gettrace() is host_tracer
        time.sleep(0.01)


def traced() -> None:
    sys.settrace(host_tracer)  # as a coverage tool does: the code it measures is called after
    loop()


def _name(func: Any) -> str | None:
    return None if func is None else getattr(func, "__qualname__", repr(func))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        body = f"hello {path}"
        if path == "/tracer":
            body = json.dumps({**STATE, "thread": _name(sys.gettrace()),
                               "threading": _name(threading.gettrace())})
        elif path == "/step":
            step(1)
        elif path == "/global-on":
            threading.settrace(host_global)
        elif path == "/global-off":
            threading.settrace(None)  # type: ignore[arg-type]
        reply = body.encode()  # PDB-BREAK
        print(f"handled {path}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    threading.Thread(target=traced, name="traced", daemon=True).start()
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
