"""A minimal ASGI app, to try ``prodbug run`` with uvicorn (and used by the tests).

    prodbug run -- uvicorn --workers 2 --app-dir agent/examples asgi_app:app
    prodbug ps                      # the supervisor and its two workers
    prodbug stacks --pid WORKER_PID

uvicorn spawns its workers (fresh interpreters, not forks): the bootstrap that
``prodbug run`` puts on PYTHONPATH recognises multiprocessing's spawned children and
starts their agents. No prodbug import here.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"hello from worker {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
