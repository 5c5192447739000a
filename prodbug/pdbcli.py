"""The operator's end of ``prodbug pdb``: a terminal relayed to pdb inside the service.

One relay thread owns the ZeroMQ socket: it pings the agent every second (the agent lets
the thread go when the pings stop), forwards typed lines, and hands the agent's output to
the main thread, which runs the prompt with readline (line editing, history).

Ctrl-D, ``q``, ``quit`` and ``c`` detach: the thread goes on. Ctrl-C also detaches (at the
prompt or while waiting for a breakpoint): a panicking operator never leaves a production
thread stopped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prodbug import protocol
from prodbug.client import Client
from prodbug.errors import RemoteError, TargetUnreachable

__all__ = ["run_pdb"]

_HISTORY = Path("~/.prodbug_history")


class _Relay(threading.Thread):
    def __init__(self, client: Client, session: str, heartbeat: float) -> None:
        super().__init__(name="prodbug-relay", daemon=True)
        self.client = client
        self.session = session
        self.lost_after = max(2 * heartbeat, 10.0)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.done = threading.Event()

    def run(self) -> None:
        last_ping = 0.0
        last_heard = time.monotonic()
        try:
            while not self.done.is_set():
                now = time.monotonic()
                if now - last_ping >= 1.0:
                    self.client.send_request("session.ping", {"session": self.session})
                    last_ping = now
                while True:
                    try:
                        line = self.lines.get_nowait()
                    except queue.Empty:
                        break
                    if line is None:
                        self.client.send_request("session.close", {"session": self.session})
                    else:
                        self.client.send_request("session.input",
                                                 {"session": self.session, "data": line})
                message = self.client.poll_message(0.1)
                if message is None:
                    if time.monotonic() - last_heard > self.lost_after:
                        self.events.put(("lost", f"no answer from the agent for "
                                                 f"{self.lost_after:g}s"))
                        return
                    continue
                last_heard = time.monotonic()
                if isinstance(message, protocol.Event):
                    self.events.put((message.kind, message.data))
                elif message.error is not None:
                    self.events.put(("error", message.error))
        except Exception as exc:  # the socket failed under us: tell the main thread
            self.events.put(("lost", str(exc)))


def _readline_setup() -> None:
    try:
        import readline
    except ImportError:  # no line editing on this platform: plain input() still works
        return
    path = _HISTORY.expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    import atexit

    atexit.register(save)


def run_pdb(client: Client, open_args: dict[str, Any]) -> int:
    """Open the session, relay the terminal until it ends; returns the exit code."""
    opened = client.request("pdb.open", open_args)
    session = str(opened["session"])
    print(f"prodbug: pdb session {session} "
          f"(Python {opened.get('python', '?')}); the agent lets the thread go "
          f"{opened.get('heartbeat', 5):g}s after this terminal goes away", file=sys.stderr)
    if sys.stdin.isatty():
        _readline_setup()
    relay = _Relay(client, session, float(opened.get("heartbeat", 5)))
    relay.start()
    detaching = False
    try:
        while True:
            try:
                kind, data = relay.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "output":
                sys.stdout.write(data.get("text") or "")
                sys.stdout.flush()
                prompt = data.get("prompt")
                if prompt is not None and not detaching:
                    relay.lines.put(_ask(prompt))
            elif kind == "state" and data.get("state") == "ended":
                print(f"prodbug: session ended: {data.get('reason', '')}", file=sys.stderr)
                return 0
            elif kind == "error":
                if data.code == "not_found":
                    print("prodbug: the session is gone (the agent ended it)", file=sys.stderr)
                    return 0
                raise RemoteError(data.message, data.code)
            elif kind == "lost":
                raise TargetUnreachable(f"lost the agent: {data}; it lets the thread go on by "
                                        f"itself when this terminal's heartbeats stop")
    except KeyboardInterrupt:
        detaching = True
        print("\nprodbug: Ctrl-C: letting the thread go on and detaching", file=sys.stderr)
        relay.lines.put(None)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                kind, data = relay.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind in ("state", "lost") or kind == "error":
                break
        return 130
    finally:
        relay.done.set()
        relay.join(2)


def _ask(prompt: str) -> str:
    """One line from the operator; Ctrl-D becomes pdb's EOF (detach)."""
    try:
        return input(prompt)
    except EOFError:
        sys.stdout.write(os.linesep)
        return "EOF"
