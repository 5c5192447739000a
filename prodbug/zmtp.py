"""One request to a local agent over its ipc socket, without libzmq: ZMTP 3.0, NULL.

``import zmq`` alone costs a CLI 20-40 ms, more than the rest of ``prodbug stacks --pid``
together. A one-shot request to a process on this host needs none of what libzmq brings
(CURVE, reconnects, queues): the agent's ipc socket is a ROUTER speaking ZMTP 3 with the
NULL mechanism, guarded by its 0700 directory, and a DEALER's side of that conversation
is small enough to write down here (ZeroMQ RFC 23, ZMTP 3.0; RFC 37 for the 3.1 PING).

Only what one request needs is spoken: greetings, READY both ways, one message out, and
messages in until the reply with our id; PINGs are answered. Anything unexpected from the
peer is a ``ProtocolError``. Sessions (pdb, VS Code) and TCP keep using ``client.Client``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import Any

from prodbug import protocol
from prodbug.errors import (
    AuthError,
    ProtocolError,
    RemoteError,
    ReplyTimeout,
    TargetUnreachable,
)

__all__ = ["MAX_REPLY_SIZE", "request"]

#: The same bound as ``client.MAX_REPLY_SIZE``: a dump of thousands of threads fits.
MAX_REPLY_SIZE = 256 << 20
_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    if len(data) < 256:
        return bytes([_COMMAND, len(data)]) + data
    return bytes([_COMMAND | _LONG]) + struct.pack(">Q", len(data)) + data


def _message(data: bytes) -> bytes:
    if len(data) < 256:
        return bytes([0, len(data)]) + data
    return bytes([_LONG]) + struct.pack(">Q", len(data)) + data


def _ready(socket_type: bytes) -> bytes:
    name = b"Socket-Type"
    return _command(b"READY", bytes([len(name)]) + name + struct.pack(">I", len(socket_type))
                    + socket_type)


def _properties(body: bytes) -> dict[bytes, bytes]:
    props: dict[bytes, bytes] = {}
    at = 0
    while at < len(body):
        size = body[at]
        name = body[at + 1:at + 1 + size]
        at += 1 + size
        if at + 4 > len(body):
            raise ProtocolError("malformed READY from the agent")
        (length,) = struct.unpack_from(">I", body, at)
        props[name.lower()] = body[at + 4:at + 4 + length]
        at += 4 + length
    if at != len(body):
        raise ProtocolError("malformed READY from the agent")
    return props


class _Peer:
    """A Unix socket to the agent with a deadline on every read and write."""

    def __init__(self, path: str, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buffer = bytearray()
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except FileNotFoundError:
            self.sock.close()
            raise TargetUnreachable(f"no agent socket at {path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise TargetUnreachable(f"the agent at {path} is gone (nothing accepts on its "
                                    f"socket)") from None
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EACCES:
                raise TargetUnreachable(f"{path}: permission denied (the agent runs as "
                                        f"another user; run prodbug as that user)") from None
            raise TargetUnreachable(f"cannot connect to {path}: {exc.strerror}") from None

    def close(self) -> None:
        self.sock.close()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ReplyTimeout(f"no reply from ipc://{self.path} within {self.timeout:g}s: "
                               f"the process may be frozen in a C call that holds the GIL; "
                               f"try again or raise --timeout")
        return left

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self.sock.settimeout(self._left())
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                continue  # the deadline check says so
            except OSError as exc:
                raise TargetUnreachable(f"the agent at {self.path} closed the connection "
                                        f"({exc.strerror})") from None
            view = view[sent:]

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.sock.settimeout(self._left())
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            except TimeoutError:
                continue
            except OSError as exc:
                raise TargetUnreachable(f"the agent at {self.path} closed the connection "
                                        f"({exc.strerror})") from None
            if not chunk:
                raise TargetUnreachable(f"the agent at {self.path} closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def frame(self) -> tuple[int, bytes]:
        """The next frame: its flags and body."""
        flags = self.read(1)[0]
        if flags & _LONG:
            (size,) = struct.unpack(">Q", self.read(8))
        else:
            size = self.read(1)[0]
        if size > MAX_REPLY_SIZE:
            raise ProtocolError(f"the agent sent a frame of {size} bytes (at most "
                                f"{MAX_REPLY_SIZE})")
        return flags, self.read(size)


def _handshake(peer: _Peer) -> None:
    peer.send(_GREETING)
    theirs = peer.read(64)
    if theirs[0] != 0xFF or theirs[9] != 0x7F:
        raise ProtocolError(f"ipc://{peer.path} is not a ZeroMQ socket")
    if theirs[10] < 3 or theirs[12:32].rstrip(b"\x00") != b"NULL":
        raise ProtocolError(f"ipc://{peer.path} does not speak ZMTP 3 with the NULL mechanism")
    peer.send(_ready(b"DEALER"))
    flags, body = peer.frame()
    if not flags & _COMMAND or not body or body[1:1 + body[0]] not in (b"READY", b"ERROR"):
        raise ProtocolError(f"ipc://{peer.path}: no READY in the handshake")
    name = body[1:1 + body[0]]
    rest = body[1 + body[0]:]
    if name == b"ERROR":
        reason = rest[1:1 + rest[0]].decode("utf-8", "replace") if rest else ""
        raise TargetUnreachable(f"ipc://{peer.path} refused the connection: {reason}")
    if _properties(rest).get(b"socket-type") != b"ROUTER":
        raise ProtocolError(f"ipc://{peer.path} is not a prodbug agent (not a ROUTER)")


def request(endpoint: str, cmd: str, args: dict[str, Any] | None = None, *,
            timeout: float = 5.0, pid: int | None = None) -> dict[str, Any]:
    """Run ``cmd`` on the agent at ``endpoint`` (``ipc://PATH``) and return its result, or
    raise the same ``ProdbugError`` as ``Client.request`` would."""
    path = endpoint.removeprefix("ipc://")
    rid = os.urandom(8).hex()
    peer = _Peer(path, timeout)
    try:
        _handshake(peer)
        peer.send(_message(protocol.encode_request(protocol.Request(
            id=rid, cmd=cmd, args=args or {}, pid=pid))))
        while True:
            flags, body = peer.frame()
            if flags & _COMMAND:
                if body[1:1 + body[0]] == b"PING":  # RFC 37: answer with its context
                    context = body[1 + body[0] + 2:]
                    peer.send(_command(b"PONG", context))
                continue
            parts = [body]
            while flags & _MORE:
                flags, body = peer.frame()
                parts.append(body)
            if len(parts) != 1:
                continue  # not something an agent sends to a DEALER
            try:
                message = protocol.decode_message(parts[0])
            except ProtocolError as exc:
                raise ProtocolError(f"malformed message from {endpoint}: {exc}") from None
            if isinstance(message, protocol.Event):
                continue  # a session's, not ours
            if message.id == rid or (message.id == "" and message.error is not None):
                if message.error is not None:
                    if message.error.code == "forbidden":
                        raise AuthError(message.error.message)
                    raise RemoteError(message.error.message, message.error.code)
                return message.result or {}
    finally:
        peer.close()
