"""The operator's side of the wire: connect, send one request, wait for its reply.

Errors are precise on purpose: a refused key, a wrong server key, a refused connection
and a silent agent each get their own message, found through a zmq monitor socket
instead of a bare timeout.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any

import zmq

from prodbug import protocol
from prodbug.errors import (
    AuthError,
    ProtocolError,
    RemoteError,
    ReplyTimeout,
    TargetUnreachable,
)
from prodbug.keys import Certificate, fingerprint

__all__ = ["Client", "Credentials"]

#: Replies (a stack dump of thousands of threads) may be large; still bound them.
MAX_REPLY_SIZE = 256 << 20
#: A handshake that fails this long after the connection opened was not refused (a wrong
#: key fails in the agent's I/O thread within a round trip): the agent gave up waiting for
#: its key check, which runs in Python (HANDSHAKE_IVL, 5 s there).
_SLOW_FAILURE = 2.0
_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
)


@dataclass(frozen=True)
class Credentials:
    """What a TCP client needs: its own secret certificate and the agent's public key."""

    client: Certificate
    server_key: str


class Client:
    """A connection to one agent. Use as a context manager; ``request`` may be called again."""

    def __init__(self, endpoint: str, credentials: Credentials | None = None,
                 timeout: float = 5.0, routing_id: bytes | None = None,
                 pid: int | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        #: Every request goes to this process of the service (its door relays it).
        self.pid = pid
        self._credentials = credentials
        if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://"):]):
            raise TargetUnreachable(f"no agent socket at {endpoint[len('ipc://'):]}")
        if endpoint.startswith("tcp://") and credentials is None:
            raise AuthError(f"{endpoint}: TCP needs a client key and the agent's public key")
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_SIZE)
        if credentials is not None:
            cert = credentials.client
            self._sock.curve_publickey = cert.public_key.encode()
            self._sock.curve_secretkey = (cert.secret_key or "").encode()
            self._sock.curve_serverkey = credentials.server_key.encode()
        if routing_id is not None:  # a session survives reconnects under the same identity
            self._sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self._monitor = self._sock.get_monitor_socket(_EVENTS)
        self.events: list[protocol.Event] = []
        self._handshaken = False
        self._connected_at: float | None = None  # the latest TCP connection, if any
        self._dropped = False  # disconnected; libzmq's next "retried" is its reconnect
        self._sock.connect(endpoint)

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The DEALER socket, for callers that poll it with other sockets."""
        return self._sock

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets at once (LINGER 0: nothing is left queued)."""
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self._ctx.term()

    def request(self, cmd: str, args: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Run ``cmd`` on the agent and return its result, or raise a ``ProdbugError``."""
        rid = self.send_request(cmd, args)
        reply = self._await_reply(rid, self.timeout if timeout is None else timeout)
        if reply.error is not None:
            if reply.error.code == "forbidden":
                raise AuthError(reply.error.message)
            raise RemoteError(reply.error.message, reply.error.code)
        return reply.result or {}

    def send_raw(self, *frames: bytes) -> None:
        """Send frames as they are (tests use this to send what a client should not).

        Never blocks for longer than the client's timeout: a DEALER with no connection to
        queue on (refused, or dropped after a failed handshake and not yet retried) would
        otherwise wait for ever in ``zmq_send``. The monitor says why meanwhile.
        """
        try:  # the usual case, on every relayed chunk: no poller, no clock
            self._sock.send_multipart(list(frames), flags=zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        deadline = time.monotonic() + self.timeout
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLOUT)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TargetUnreachable(
                    f"could not send to {self.endpoint} within {self.timeout:g}s: no "
                    f"connection took the request (is the agent listening, and the port "
                    f"forwarded?)")
            events = dict(poller.poll(int(left * 1000) + 1))
            if self._monitor in events:  # raises when the monitor knows what went wrong
                self._on_event(self._monitor.recv_multipart())
            try:
                self._sock.send_multipart(list(frames), flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                pass

    def receive_raw(self, timeout: float) -> bytes | None:
        """The next reply frame within ``timeout`` seconds, or None."""
        if self._sock.poll(int(timeout * 1000)):
            return self._sock.recv()
        return None

    def _await_reply(self, rid: str, timeout: float) -> protocol.Reply:
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        failed_handshakes = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if self._credentials is not None and not self._handshaken:
                    raise TargetUnreachable(self._timeout_message(timeout))
                raise ReplyTimeout(self._timeout_message(timeout))
            events = dict(poller.poll(int(left * 1000) + 1))
            if self._monitor in events:
                failed_handshakes += self._on_event(self._monitor.recv_multipart())
                if failed_handshakes >= 2:
                    raise AuthError(
                        f"CURVE handshake with {self.endpoint} failed: the server key does "
                        f"not match the agent's (check PRODBUG_SERVER_KEY / --server-key), "
                        f"or that port is not a prodbug agent")
            if self._sock in events:
                message = self._decode(self._sock.recv())
                if isinstance(message, protocol.Event):
                    self.events.append(message)  # a session's output, kept for its reader
                elif message.id == rid or (message.id == "" and message.error is not None):
                    return message

    def _decode(self, data: bytes) -> protocol.Reply | protocol.Event:
        try:
            return protocol.decode_message(data)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed message from {self.endpoint}: {exc}") from None

    def send_request(self, cmd: str, args: dict[str, Any] | None = None, *,
                     pid: int | None = None) -> str:
        """Send a request without waiting (to process ``pid`` of the service, default the
        client's); its reply comes through ``poll_message`` or ``gather``."""
        rid = secrets.token_hex(8)
        self.send_raw(protocol.encode_request(protocol.Request(
            id=rid, cmd=cmd, args=args or {}, pid=self.pid if pid is None else pid)))
        return rid

    def gather(self, rids: set[str], timeout: float) -> dict[str, protocol.Reply]:
        """The replies to ``rids`` that arrive within ``timeout`` seconds (the others are
        missing from the result: the caller names them)."""
        deadline = time.monotonic() + timeout
        wanted = set(rids)
        found: dict[str, protocol.Reply] = {}
        while wanted:  # what has arrived already is taken even when the time is up
            left = max(0.0, deadline - time.monotonic())
            if not self._sock.poll(int(left * 1000)):
                break
            message = self._decode(self._sock.recv())
            if isinstance(message, protocol.Reply) and message.id in wanted:
                wanted.discard(message.id)
                found[message.id] = message
        return found

    def poll_message(self, timeout: float) -> protocol.Reply | protocol.Event | None:
        """The next event (kept ones first) or reply within ``timeout`` seconds, or None."""
        if self.events:
            return self.events.pop(0)
        if self._sock.poll(int(timeout * 1000)):
            return self._decode(self._sock.recv())
        return None

    def _on_event(self, frames: list[bytes]) -> int:
        # A monitor message: uint16 event id and uint32 value, then the endpoint. Parsed
        # here because zmq.utils.monitor imports asyncio, 20+ ms of CLI start-up.
        (kind,) = struct.unpack_from("=H", frames[0])
        if kind == zmq.EVENT_CONNECTED:
            self._connected_at = time.monotonic()
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshaken = True
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            name = self._credentials.client.name if self._credentials else "?"
            key = fingerprint(self._credentials.client.public_key) if self._credentials else "?"
            raise AuthError(
                f'not authorized: the agent at {self.endpoint} refused key "{name}" ({key}...); '
                f"ask the service owner to put {name}.key in its PRODBUG_AUTHORIZED_KEYS")
        elif kind == zmq.EVENT_CONNECT_RETRIED and not self._handshaken:
            if not self._dropped:
                raise TargetUnreachable(
                    f"cannot connect to {self.endpoint}: connection refused (is the agent "
                    f"listening there, and the port forwarded?)")
            self._dropped = False
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                      zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) or (
                kind == zmq.EVENT_DISCONNECTED and not self._handshaken):
            self._dropped = self._dropped or kind == zmq.EVENT_DISCONNECTED
            slow = self._connected_at is not None and \
                time.monotonic() - self._connected_at >= _SLOW_FAILURE
            return 0 if slow else 1  # slow: the agent timed out; we reconnect and wait on
        return 0

    def _timeout_message(self, timeout: float) -> str:
        if self._credentials is not None and not self._handshaken:  # CURVE (TCP, or tunnelled)
            where = self.endpoint.removeprefix("tcp://")
            if self._connected_at is not None:  # TCP is up: the agent did not answer in it
                return (f"connected to {where} but the agent did not complete the handshake "
                        f"within {timeout:g}s: the process may be frozen in a C call holding "
                        f"the GIL (keys are checked in Python); on its host, `prodbug stacks "
                        f"--pid PID` makes a C-level dump. Or that port is not a prodbug agent")
            return (f"could not open a TCP connection to {where} within {timeout:g}s (is the "
                    f"port forwarded to a prodbug agent?)")
        return (f"no reply from {self.endpoint} within {timeout:g}s: the process may be "
                f"frozen in a C call that holds the GIL; try again or raise --timeout")
