"""The operator's end of ``prodbug vscode``: a local port for VS Code, relayed to debugpy.

VS Code attaches to ``127.0.0.1:PORT`` on the operator's machine; every byte of the Debug
Adapter Protocol travels inside the guarded ZeroMQ connection to the agent, which relays
it to the debugger in the service (agent/dap.py). That port acts with the operator's key,
and the operator's machine is often a shared jump host: on Linux a connection is accepted
only from the operator's own uid (its owner, read from ``/proc/net/tcp``), and a refused
one is said on screen. One loop, one thread: it polls the
ZeroMQ socket, the listening socket and VS Code's connection, and pings the agent every
second (the agent closes VS Code's side, so threads resume, when the pings stop).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from prodbug import protocol
from prodbug.client import Client
from prodbug.errors import AuthError, ConfigError, RemoteError, TargetUnreachable
from prodbug.textsafe import printable

__all__ = ["launch_config", "merge_launch_json", "run_vscode"]


def launch_config(name: str, port: int, local_root: str, remote_root: str,
                  just_my_code: bool) -> dict[str, Any]:
    """The ``launch.json`` attach configuration for this session."""
    return {
        "name": name,
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": "127.0.0.1", "port": port},
        "pathMappings": [{"localRoot": local_root, "remoteRoot": remote_root}],
        "justMyCode": just_my_code,
    }


def _strip_jsonc(text: str) -> str:
    """VS Code's launch.json allows comments and trailing commas; json does not."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def merge_launch_json(path: Path, config: dict[str, Any]) -> str:
    """Add ``config`` to launch.json, replacing only an entry of the same name. A file that
    cannot be read, parsed or written raises ConfigError saying so."""
    try:
        return _merge_launch_json(path, config)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot update {path} ({why}); add the block above by hand") \
            from None


def _merge_launch_json(path: Path, config: dict[str, Any]) -> str:
    document: dict[str, Any] = {"version": "0.2.0", "configurations": []}
    note = ""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            document = json.loads(_strip_jsonc(text)) if text.strip() else document
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); add the block above by "
                              f"hand") from None
        if not isinstance(document, dict) or not isinstance(
                document.setdefault("configurations", []), list):
            raise ConfigError(f"{path} has no 'configurations' list; add the block above by "
                              f"hand")
        if _strip_jsonc(text) != text:
            backup = path.with_name(path.name + ".bak")
            backup.write_text(text, encoding="utf-8")
            note = f" (its comments are kept in {backup.name})"
    configs = [c for c in document["configurations"]
               if not (isinstance(c, dict) and c.get("name") == config["name"])]
    replaced = len(configs) != len(document["configurations"])
    configs.append(config)
    document["configurations"] = configs
    document.setdefault("version", "0.2.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=4) + "\n", encoding="utf-8")
    return f"{'updated' if replaced else 'added'} {config['name']!r} in {path}{note}"


def _confirm(message: str) -> bool:
    if not sys.stdin.isatty():
        return False
    print(f"prodbug vscode: {printable(message)}", file=sys.stderr)
    try:
        return input("start debugpy anyway? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _hex_address(host: str, port: int) -> str | None:
    """``/proc/net/tcp{,6}``'s spelling of an address (host byte order, as the kernel prints)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    words = [int.from_bytes(packed[i:i + 4], "little") for i in range(0, 16, 4)]
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def peer_uid(conn: socket.socket) -> int | None:
    """The uid owning the other end of a loopback TCP connection (Linux), else None."""
    try:
        peer_host, peer_port = conn.getpeername()[:2]
        local_host, local_port = conn.getsockname()[:2]
    except OSError:
        return None
    want_local = _hex_address(peer_host, peer_port)
    want_remote = _hex_address(local_host, local_port)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                        return int(fields[7])
        except OSError:
            continue
    return None


class _Relay:
    def __init__(self, client: Client, session: str, listen_port: int, heartbeat: float,
                 announce: Callable[[int], None]) -> None:
        self.announce = announce
        self.client = client
        self.session = session
        self.listen_port = listen_port
        self.lost_after = max(2 * heartbeat, 10.0)
        self.ping_every = min(1.0, heartbeat / 4)  # as pdb's: a starved terminal keeps it
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.channel: str | None = None
        self.pending: list[bytes] = []
        self.connect_rid: str | None = None
        #: dap.connect requests whose VS Code connection closed before the answer came:
        #: the channels they open are closed at once, never left orphaned in the agent.
        self.orphans: set[str] = set()
        self.check_owner = os.path.exists("/proc/net/tcp")

    def listen(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.listen_port))
        except OSError as exc:
            listener.close()
            raise ConfigError(f"cannot listen on 127.0.0.1:{self.listen_port}: "
                              f"{exc.strerror}; pick another --port") from None
        listener.listen(4)
        self.listener = listener
        return int(listener.getsockname()[1])

    def close_conn(self, why: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
            print(f"prodbug vscode: VS Code connection closed ({why}); attach again any time",
                  file=sys.stderr)
        if self.channel is not None:
            self.client.send_request("dap.disconnect",
                                     {"session": self.session, "channel": self.channel})
        elif self.connect_rid is not None:
            self.orphans.add(self.connect_rid)
        self.channel = None
        self.pending.clear()
        self.connect_rid = None

    def on_accept(self) -> None:
        if self.listener is None:
            return
        conn, _ = self.listener.accept()
        if self.check_owner:
            uid = peer_uid(conn)
            if uid != os.getuid():
                conn.close()
                who = "an unknown user" if uid is None else f"uid {uid}"
                print(f"prodbug vscode: refused a connection from {who}: only your own "
                      f"user (uid {os.getuid()}) may use this port", file=sys.stderr)
                return
        if self.conn is not None and not self._hung_up(self.conn):
            conn.close()  # one VS Code at a time
            return
        if self.conn is not None:
            self.close_conn("VS Code hung up")
        self.conn = conn
        self.connect_rid = self.client.send_request("dap.connect", {"session": self.session})
        print("prodbug vscode: VS Code connected", file=sys.stderr)

    @staticmethod
    def _hung_up(conn: socket.socket) -> bool:
        try:
            return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def on_vscode(self) -> None:
        if self.conn is None:
            return
        try:
            data = self.conn.recv(256 * 1024)
        except OSError:
            data = b""
        if not data:
            self.close_conn("VS Code hung up")
            return
        if self.channel is None:
            self.pending.append(data)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        self.client.send_request("dap.send", {"session": self.session, "channel": self.channel,
                                              "data": base64.b64encode(data).decode("ascii")})

    def on_message(self, message: protocol.Reply | protocol.Event) -> int | None:
        """Handle one message from the agent; a number means: exit with it."""
        if isinstance(message, protocol.Reply):
            if message.id in self.orphans:
                self.orphans.discard(message.id)
                if message.result and "channel" in message.result:
                    self.client.send_request("dap.disconnect", {
                        "session": self.session, "channel": message.result["channel"]})
                return None
            if message.error is not None:
                if message.error.code == "forbidden" and not message.id:  # our key: removed
                    raise AuthError(f"{printable(message.error.message)}; the agent closes "
                                    f"VS Code's session by itself")
                if message.id == self.connect_rid or message.error.code == "not_found":
                    print(f"prodbug vscode: {printable(message.error.message)}", file=sys.stderr)
                    self.close_conn("the agent refused")
                else:
                    print(f"prodbug vscode: {printable(message.error.message)}", file=sys.stderr)
            elif message.id == self.connect_rid and message.result:
                self.channel = str(message.result["channel"])
                for chunk in self.pending:
                    self._send(chunk)
                self.pending.clear()
            return None
        kind, data = message.kind, message.data
        if kind == "dap" and self.conn is not None and data.get("channel") == self.channel:
            try:
                self.conn.sendall(base64.b64decode(data["data"]))
            except OSError:
                self.close_conn("VS Code hung up")
        elif kind == "dap_closed" and data.get("channel") == self.channel:
            self.channel = None
            self.close_conn(printable(str(data.get("reason", "closed by the agent"))))
        elif kind == "dap_ready":
            if data.get("debugpy") != "ready":
                raise RemoteError(f"debugpy did not start in the service: "
                                  f"{printable(str(data.get('debugpy_error')))}", "not_ready")
            port = self.listen()
            self.announce(port)
            print(f"prodbug vscode: ready: attach VS Code to 127.0.0.1:{port} "
                  f"(Ctrl-C to stop)", file=sys.stderr)
        elif kind == "state" and data.get("state") == "ended":
            print(f"prodbug vscode: session ended: {printable(str(data.get('reason', '')))}",
                  file=sys.stderr)
            return 0
        return None

    def run(self) -> int:
        sock = self.client.socket
        last_ping, last_heard = 0.0, time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_ping >= self.ping_every:
                self.client.send_request("session.ping", {"session": self.session})
                last_ping = now
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if self.listener is not None:
                poller.register(self.listener, zmq.POLLIN)
            if self.conn is not None:
                poller.register(self.conn, zmq.POLLIN)
            events = dict(poller.poll(200))
            # VS Code's old connection first: its hang-up may come with the next attach.
            if self.conn is not None and self.conn.fileno() in events:
                self.on_vscode()
            if self.listener is not None and self.listener.fileno() in events:
                self.on_accept()
            while True:
                message = self.client.poll_message(0)
                if message is None:
                    break
                last_heard = time.monotonic()
                code = self.on_message(message)
                if code is not None:
                    return code
            if time.monotonic() - last_heard > self.lost_after:
                raise TargetUnreachable(f"no answer from the agent for {self.lost_after:g}s; "
                                        f"it closes VS Code's session by itself")

    def shutdown(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def run_vscode(client: Client, *, port: int, local_root: str, remote_root: str | None,
               just_my_code: bool, yes: bool, launch_json: Path | None, label: str) -> int:
    """Open the session, print the attach configuration, relay until Ctrl-C."""
    try:
        opened = client.request("dap.open", {"confirm": yes})
    except RemoteError as exc:
        if exc.code != "confirm_needed":
            raise
        if not _confirm(str(exc)):
            raise ConfigError(f"{exc}; pass --yes to start it") from None
        opened = client.request("dap.open", {"confirm": True})
    session = str(opened["session"])

    def announce(actual_port: int) -> None:
        config = launch_config(f"prodbug: {label}", actual_port, local_root,
                               remote_root or str(opened["remote_root"]), just_my_code)
        print(json.dumps(config, indent=4), flush=True)
        if launch_json is not None:
            try:
                said = merge_launch_json(launch_json, config)
            except ConfigError as exc:  # the block printed above works all the same: go on
                said = str(exc)
            print(f"prodbug vscode: {said}", file=sys.stderr)

    if opened.get("slow_tracing"):
        print(f"prodbug vscode: Python {printable(str(opened.get('python')))}: the service "
              f"runs several times slower while VS Code is attached; when the last VS Code "
              f"detaches, debugpy's tracing is taken down again (the host is back to its "
              f"speed)", file=sys.stderr)
    left = opened.get("debugpy_left")
    if isinstance(left, list) and left:
        print(f"prodbug vscode: the last detach could not undo all of debugpy: "
              f"{printable('; '.join(map(str, left)))}", file=sys.stderr)
    if opened.get("debugpy") != "ready":
        print("prodbug vscode: starting debugpy in the service (once per process)...",
              file=sys.stderr)
    relay = _Relay(client, session, port, float(opened.get("heartbeat", 5)), announce)
    try:
        return relay.run()
    except KeyboardInterrupt:
        client.send_request("session.close", {"session": session})
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # let the agent close VS Code's side first
            message = client.poll_message(0.2)
            if isinstance(message, protocol.Event) and message.kind == "state":
                break
        print("\nprodbug vscode: stopped; VS Code's session is closed and threads resume",
              file=sys.stderr)
        return 0
    finally:
        relay.shutdown()
