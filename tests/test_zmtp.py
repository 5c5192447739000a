"""The libzmq-free local request (prodbug/zmtp.py) against a real agent, and against peers
that are not one: each must end in the error a ``Client`` would raise, within its timeout."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Target, run_cli

from prodbug import zmtp
from prodbug.errors import ProtocolError, RemoteError, ReplyTimeout, TargetUnreachable


@pytest.fixture
def agent(spawn: Callable[..., Target], base_env: dict[str, str]) -> Target:
    return spawn("threads", "--threads", "3", env=base_env)


def test_stacks_info_and_errors_from_a_real_agent(agent: Target) -> None:
    endpoint = str(agent.facts["ipc"])
    dump = zmtp.request(endpoint, "stacks", {"cpu_interval": 0}, timeout=20)
    assert dump["pid"] == agent.pid
    assert {"worker-0", "worker-1", "worker-2"} <= {t["name"] for t in dump["threads"]}
    assert zmtp.request(endpoint, "info", timeout=20)["pid"] == agent.pid
    with pytest.raises(RemoteError) as err:
        zmtp.request(endpoint, "stacks", {"cpu_interval": "soon"}, timeout=20)
    assert err.value.code == "bad_request"
    with pytest.raises(RemoteError) as err:
        zmtp.request(endpoint, "no-such-command", timeout=20)
    assert err.value.code == "unknown_command"


def test_the_cli_uses_it_for_a_local_pid_without_importing_zmq(
        agent: Target, base_env: dict[str, str]) -> None:
    code = ("import sys, runpy; sys.argv = ['prodbug', 'stacks', '--pid', sys.argv[1], "
            "'--json']\ntry:\n    runpy.run_module('prodbug', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print('ZMQ' if 'zmq' in sys.modules else 'NOZMQ', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(agent.pid)], env=base_env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["processes"][0]["pid"] == agent.pid
    assert done.stderr.strip().splitlines()[-1] == "NOZMQ"
    # and the result is the same as through libzmq (an explicit ipc:// TARGET)
    through_zmq = run_cli("info", f"{agent.facts['ipc']}", "--json", env=base_env)
    local = run_cli("info", "--pid", str(agent.pid), "--json", env=base_env)
    assert through_zmq.returncode == local.returncode == 0, through_zmq.stderr + local.stderr
    assert json.loads(through_zmq.stdout)["pid"] == json.loads(local.stdout)["pid"]


@pytest.fixture
def fake_peer(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A Unix socket server running ``behave(conn)`` for each connection."""
    servers: list[tuple[socket.socket, threading.Thread]] = []
    conns: list[socket.socket] = []

    def start(behave: Callable[[socket.socket], None]) -> str:
        path = str(tmp_path / f"peer{len(servers)}.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            with contextlib.suppress(OSError):
                behave(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((server, thread))
        return "ipc://" + path

    yield start
    for server, thread in servers:
        server.close()
        for conn in conns:
            conn.close()
        thread.join(5)


def _greeting(mechanism: bytes = b"NULL") -> bytes:
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + mechanism.ljust(20, b"\x00")
            + b"\x01" + b"\x00" * 31)


def _ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_stale_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: the agent died without cleaning up
    with pytest.raises(TargetUnreachable, match="is gone"):
        zmtp.request(f"ipc://{path}", "ping", timeout=5)
    with pytest.raises(TargetUnreachable, match="no agent socket"):
        zmtp.request(f"ipc://{tmp_path}/absent.sock", "ping", timeout=5)


def test_a_peer_that_says_nothing_times_out(fake_peer) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()
    endpoint = fake_peer(lambda conn: done.wait(10))
    with pytest.raises(ReplyTimeout, match=r"within 0\.5s"):
        zmtp.request(endpoint, "ping", timeout=0.5)
    done.set()


def test_a_peer_that_is_not_zeromq(fake_peer) -> None:  # type: ignore[no-untyped-def]
    endpoint = fake_peer(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n" * 4))
    with pytest.raises(ProtocolError, match="not a ZeroMQ socket"):
        zmtp.request(endpoint, "ping", timeout=5)


def test_a_peer_with_another_mechanism_or_socket_type(fake_peer) -> None:  # type: ignore[no-untyped-def]
    endpoint = fake_peer(lambda conn: conn.sendall(_greeting(b"CURVE")))
    with pytest.raises(ProtocolError, match="NULL mechanism"):
        zmtp.request(endpoint, "ping", timeout=5)

    def pub(conn: socket.socket) -> None:
        conn.sendall(_greeting())
        _read(conn, 64)
        conn.sendall(_ready(b"PUB"))
        _read(conn, 1)

    with pytest.raises(ProtocolError, match="not a ROUTER"):
        zmtp.request(fake_peer(pub), "ping", timeout=5)


def test_a_huge_frame_is_refused_before_it_is_read(fake_peer) -> None:  # type: ignore[no-untyped-def]
    def huge(conn: socket.socket) -> None:
        conn.sendall(_greeting())
        _read(conn, 64)
        conn.sendall(_ready(b"ROUTER"))
        _read(conn, 1)
        conn.sendall(b"\x02" + struct.pack(">Q", 1 << 40))  # a terabyte, announced

    with pytest.raises(ProtocolError, match="bytes"):
        zmtp.request(fake_peer(huge), "ping", timeout=5)


def test_pings_are_answered_and_other_replies_skipped(fake_peer) -> None:  # type: ignore[no-untyped-def]
    pong: list[bytes] = []

    def router(conn: socket.socket) -> None:
        conn.sendall(_greeting())
        _read(conn, 64)
        conn.sendall(_ready(b"ROUTER"))
        _, size = _read(conn, 2)
        _read(conn, size)  # the client's READY
        _, size = _read(conn, 2)
        request = json.loads(_read(conn, size))
        ping = b"\x04PING" + b"\x00\x0a" + b"ctx"
        conn.sendall(bytes([0x04, len(ping)]) + ping)
        _, size = _read(conn, 2)
        pong.append(_read(conn, size))
        for rid in ("someone-else", request["id"]):
            reply = json.dumps({"prodbug": 1, "id": rid, "ok": True,
                                "result": {"who": rid}}).encode()
            conn.sendall(bytes([0, len(reply)]) + reply)

    result = zmtp.request(fake_peer(router), "ping", timeout=10)
    assert result["who"] != "someone-else"
    assert pong == [b"\x04PONGctx"]
