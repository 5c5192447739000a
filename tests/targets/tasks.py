"""An asyncio service with 200 tasks of three kinds, one kind stuck forever.

* 120 ``stuck-N``: ``await EVENT.wait()`` on an Event nobody sets;
* 50 ``napper-N``: ``await asyncio.sleep(3600)``;
* 30 ``reader-N``: ``await QUEUE.get()`` on an empty queue.
The loop runs in the thread ``loop-thread``; prints ``READY`` once every task has started.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

import prodbug

KINDS = (("stuck", 120), ("napper", 50), ("reader", 30))


async def wait_for_event(event: asyncio.Event) -> None:
    await event.wait()


async def nap() -> None:
    await asyncio.sleep(3600)


async def read(q: asyncio.Queue[int]) -> None:
    await q.get()


async def serve(started: threading.Event) -> None:
    event = asyncio.Event()
    q: asyncio.Queue[int] = asyncio.Queue()
    tasks = []
    for kind, count in KINDS:
        for i in range(count):
            coro = (wait_for_event(event) if kind == "stuck" else nap() if kind == "napper"
                    else read(q))
            tasks.append(asyncio.create_task(coro, name=f"{kind}-{i}"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    started.set()
    await asyncio.gather(*tasks)


def main() -> None:
    started = threading.Event()
    threading.Thread(target=lambda: asyncio.run(serve(started)), name="loop-thread",
                     daemon=True).start()
    started.wait()
    agent = prodbug.start_agent()
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
