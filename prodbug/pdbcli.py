"""The operator's end of ``prodbug pdb``: a terminal relayed to pdb inside the service.

One relay thread owns the ZeroMQ socket: it pings the agent four times per heartbeat, at
most a second apart (the agent lets the thread go when the pings stop), forwards typed
lines, and hands the agent's output to the main thread, which runs the prompt with readline
(line editing, history).

Ctrl-D, ``q``, ``quit`` and ``c`` detach: the thread goes on. Ctrl-C also detaches (at the
prompt or while waiting for a breakpoint): a panicking operator never leaves a production
thread stopped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from prodbug import protocol
from prodbug.client import Client
from prodbug.errors import AuthError, RemoteError, TargetUnreachable
from prodbug.textsafe import printable

__all__ = ["run_pdb"]

_HISTORY = Path("~/.prodbug_history")


class _Relay(threading.Thread):
    """Owns the socket. It also sees Ctrl-C first: a SIGINT that lands while the main
    thread is inside readline may not interrupt it until the next key, so the signal's
    wake-up byte (``signal.set_wakeup_fd``) makes this thread close the session at once,
    and whenever the session ends while the main thread waits at the prompt, this thread
    interrupts it."""

    def __init__(self, client: Client, session: str, heartbeat: float, wakeup: int) -> None:
        super().__init__(name="prodbug-relay", daemon=True)
        self.client = client
        self.session = session
        self.wakeup = wakeup
        self.lost_after = max(2 * heartbeat, 10.0)
        #: Four pings per heartbeat: a terminal starved of CPU for most of a heartbeat
        #: (a loaded machine) still keeps its session.
        self.ping_every = min(1.0, heartbeat / 4)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.done = threading.Event()
        self.at_prompt = False
        self.interrupted = False  # the operator pressed Ctrl-C
        self.over = False  # the session ended, or the agent is lost

    def _close_session(self) -> None:
        self.client.send_request("session.close", {"session": self.session})

    def _finish(self, kind: str, data: Any) -> None:
        self.over = True
        self.events.put((kind, data))
        if self.at_prompt:  # get the main thread out of readline
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def run(self) -> None:
        last_ping = 0.0
        last_heard = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.client.socket, zmq.POLLIN)
        poller.register(self.wakeup, zmq.POLLIN)
        try:
            while not self.done.is_set():
                now = time.monotonic()
                if now - last_ping >= self.ping_every:
                    self.client.send_request("session.ping", {"session": self.session})
                    last_ping = now
                while True:
                    try:
                        line = self.lines.get_nowait()
                    except queue.Empty:
                        break
                    if line is None:
                        self._close_session()
                    else:
                        self.client.send_request("session.input",
                                                 {"session": self.session, "data": line})
                ready = dict(poller.poll(100))
                if self.wakeup in ready:
                    signals = os.read(self.wakeup, 64)
                    stopping = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", 0)}
                    if stopping & set(signals) and not self.interrupted and not self.over:
                        self.interrupted = True
                        self._close_session()
                message = self.client.poll_message(0)
                if message is None:
                    if time.monotonic() - last_heard > self.lost_after:
                        self._finish("lost", f"no answer from the agent for "
                                             f"{self.lost_after:g}s")
                        return
                    continue
                last_heard = time.monotonic()
                if isinstance(message, protocol.Event):
                    if message.kind == "state" and message.data.get("state") == "ended":
                        self._finish(message.kind, message.data)
                    else:
                        self.events.put((message.kind, message.data))
                elif message.error is not None:
                    # The session is gone, or our key was removed from the allow-list
                    # (the agent says so unasked, with no request id): nothing more to do.
                    if message.error.code == "not_found" or (
                            message.error.code == "forbidden" and not message.id):
                        self._finish("error", message.error)
                    else:
                        self.events.put(("error", message.error))
        except Exception as exc:  # the socket failed under us: tell the main thread
            self._finish("lost", str(exc))


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
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        return _run(client, open_args, wake_r)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(wake_r)
        os.close(wake_w)


def _run(client: Client, open_args: dict[str, Any], wakeup: int) -> int:
    opened = client.request("pdb.open", open_args)
    session = str(opened["session"])
    print(f"prodbug: pdb session {printable(session)} "
          f"(Python {printable(opened.get('python', '?'))}); the agent lets the thread go "
          f"{opened.get('heartbeat', 5):g}s after this terminal goes away", file=sys.stderr)
    if sys.stdin.isatty():
        _readline_setup()
    relay = _Relay(client, session, float(opened.get("heartbeat", 5)), wakeup)
    relay.start()
    try:
        while True:
            try:
                kind, data = _next_event(relay)
            except KeyboardInterrupt:
                if relay.over or relay.interrupted:
                    kind, data = _drain_end(relay)
                else:
                    raise
            if kind == "output":
                # pdb prints what the host's objects say of themselves: keep the lines,
                # never the escape sequences.
                sys.stdout.write(printable(data.get("text") or "", multiline=True))
                sys.stdout.flush()
                prompt = data.get("prompt")
                if prompt is not None and not relay.over:
                    line = _ask(printable(prompt), relay)
                    if line is not None:
                        relay.lines.put(line)
            elif kind in ("state", "error", "lost"):
                return _ended(kind, data, relay.interrupted)
    except KeyboardInterrupt:
        if relay.over and not relay.interrupted:  # the relay woke us: the session ended
            return _ended(*_drain_end(relay), interrupted=False)
        if not relay.interrupted:
            relay.interrupted = True
            relay.lines.put(None)
        return _ended(*_drain_end(relay), interrupted=True)
    finally:
        relay.done.set()
        relay.join(2)


def _next_event(relay: _Relay) -> tuple[str, Any]:
    while True:
        try:
            return relay.events.get(timeout=0.2)
        except queue.Empty:
            continue


def _drain_end(relay: _Relay) -> tuple[str, Any]:
    """After Ctrl-C or an ending: the ending event (waiting up to 5 s for it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            kind, data = relay.events.get(timeout=0.2)
        except queue.Empty:
            continue
        except KeyboardInterrupt:
            continue
        if kind in ("state", "error", "lost"):
            return kind, data
    return "lost", "the agent did not confirm the end within 5s"


def _ended(kind: str, data: Any, interrupted: bool) -> int:
    if interrupted:
        print("\nprodbug: Ctrl-C: the thread goes on; detached", file=sys.stderr)
    if kind == "state":
        print(f"prodbug: session ended: {printable(data.get('reason', ''))}", file=sys.stderr)
        return 130 if interrupted else 0
    if kind == "error":
        if data.code == "not_found":
            print("prodbug: the session is gone (the agent ended it)", file=sys.stderr)
            return 130 if interrupted else 0
        if data.code == "forbidden":
            raise AuthError(f"{data.message}; the agent lets the thread go on when this "
                            f"terminal's heartbeats stop")
        raise RemoteError(data.message, data.code)
    raise TargetUnreachable(f"lost the agent: {data}; it lets the thread go on by itself "
                            f"when this terminal's heartbeats stop")


def _ask(prompt: str, relay: _Relay) -> str | None:
    """One line from the operator; Ctrl-D becomes pdb's EOF (detach). None when the
    session ended (or Ctrl-C was pressed) while waiting: the caller drains the end."""
    relay.at_prompt = True
    try:
        if relay.over:  # ended just before we got here: do not wait for a key
            raise KeyboardInterrupt
        return input(prompt)
    except EOFError:
        sys.stdout.write(os.linesep)
        return "EOF"
    finally:
        relay.at_prompt = False
