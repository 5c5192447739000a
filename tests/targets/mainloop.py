"""A service whose main thread has been looping since it started (the shape of asyncio and
gthread services), with a long-lived pool thread, for pdb on threads already running.

* the main thread counts in ``n`` (written to $COUNTER_FILE) every 10 ms, and writes
  whether it is being traced to $COUNTER_FILE.traced;
* ``pool-0``, a ThreadPoolExecutor thread, runs ``task(n)`` submitted every 50 ms;
* ``mainloop.py aio``: the main thread runs an asyncio server instead, one line in,
  ``hello NAME`` back.
Prints ``READY {"pid", "port"}``; stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import prodbug

COUNTER = os.environ["COUNTER_FILE"]
STOP = threading.Event()


def task(n: int) -> int:
    doubled = n * 2
    return doubled


def record(n: int) -> None:
    with open(COUNTER + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(COUNTER + ".tmp", COUNTER)
    with open(COUNTER + ".traced.tmp", "w") as f:
        f.write("1" if sys.gettrace() is not None else "0")
    os.replace(COUNTER + ".traced.tmp", COUNTER + ".traced")


def loop() -> None:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool")
    n = 0
    while not STOP.is_set():
        n += 1  # MAIN-LINE
        record(n)
        if n % 5 == 0:
            pool.submit(task, n)
        time.sleep(0.01)
    pool.shutdown(wait=False)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    name = (await reader.readline()).decode().strip()
    reply = f"hello {name}\n"  # AIO-LINE
    writer.write(reply.encode())
    await writer.drain()
    writer.close()


async def serve() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("READY " + json.dumps({"pid": os.getpid(), "port": port}), flush=True)
    n = 0
    while not STOP.is_set():
        n += 1
        record(n)
        await asyncio.sleep(0.01)


def main() -> None:
    prodbug.start_agent()
    threading.Thread(target=lambda: (sys.stdin.read(), STOP.set()), daemon=True).start()
    if sys.argv[1:] == ["aio"]:
        asyncio.run(serve())
        return
    print("READY " + json.dumps({"pid": os.getpid(), "port": None}), flush=True)
    loop()


if __name__ == "__main__":
    main()
