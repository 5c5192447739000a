"""A minimal WSGI app, to try ``prodbug run`` with gunicorn (and used by the tests).

    prodbug run -- gunicorn --workers 3 --chdir agent/examples wsgi_app:app
    prodbug ps                      # the master and its three workers
    prodbug stacks --pid WORKER_PID

No prodbug import here: ``prodbug run`` starts the agent in the master at interpreter
start, and every worker gunicorn forks gets its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any],
        start_response: Callable[[str, list[tuple[str, str]]], Any]) -> Iterable[bytes]:
    body = f"hello from worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
