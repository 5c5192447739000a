"""A small threaded HTTP service with two problems, for ``scripts/demo``.

* ``/charge`` waits on ``LEDGER_LOCK``, which the ``reconciler`` thread holds while it
  sleeps: every charge request hangs.
* the ``pricing`` thread burns a CPU in pure Python.

The agent starts from the ``PRODBUG_*`` environment, as in production. The service prints
``READY {"pid": ..., "http": ..., "prodbug": ...}`` and runs until its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prodbug

LEDGER_LOCK = threading.Lock()


def reconcile_ledger() -> None:
    with LEDGER_LOCK:
        while True:
            time.sleep(1.0)  # "just one more batch": never lets go


def recompute_prices() -> None:
    prices = [1.0] * 1000
    while True:
        for i in range(len(prices)):
            prices[i] = prices[i] * 1.0001 % 97


def charge(account: str) -> int:
    with LEDGER_LOCK:
        return len(account)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(charge(self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    agent = prodbug.start_agent()
    threading.Thread(target=reconcile_ledger, name="reconciler", daemon=True).start()
    threading.Thread(target=recompute_prices, name="pricing", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http-acceptor", daemon=True).start()
    host, port = server.server_address[:2]
    print("READY " + json.dumps({"pid": os.getpid(), "http": f"http://{host}:{port}",
                                 "prodbug": agent.tcp_endpoint}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
