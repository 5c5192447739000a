"""An ASGI app for the one-port tests: ``/slow`` awaits in ``slow_here`` until the file
``$RELEASE_FILE`` exists (an asyncio task in flight); other paths answer at once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any


async def slow_here(release: str) -> None:
    while not os.path.exists(release):
        await asyncio.sleep(0.05)


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await slow_here(os.environ["RELEASE_FILE"])
    body = f"hello from worker {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
