"""A WSGI app for the one-port tests: ``/stuck`` waits in ``stuck_here`` until the file
``$RELEASE_FILE`` exists; any other path answers at once (the BREAK line)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any


def stuck_here(release: str) -> None:
    while not os.path.exists(release):
        time.sleep(0.05)


def app(environ: dict[str, Any],
        start_response: Callable[[str, list[tuple[str, str]]], Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/stuck":
        stuck_here(os.environ["RELEASE_FILE"])
    body = f"hello from worker {os.getpid()}\n".encode()  # BREAK
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
