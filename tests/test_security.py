"""Bad input from every side: the agent answers what it can, drops what it must, serves on,
and the host never stops working (its counter keeps growing throughout)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import zmq
from conftest import Keys, wait_for

from prodbug.client import Client, Credentials
from prodbug.errors import AuthError, RemoteError
from prodbug.keys import fingerprint, load_certificate


@pytest.fixture
def host(spawn, agent_env: dict[str, str], tmp_path: Path):
    counter = tmp_path / "counter"
    target = spawn("threads", "--threads", "2",
                   env={**agent_env, "COUNTER_FILE": str(counter),
                        "PRODBUG_MAX_MESSAGE_SIZE": str(64 * 1024)})

    def count() -> int:
        try:
            return int(counter.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def still_working() -> bool:
        start = count()
        return wait_for(lambda: count() > start)

    assert still_working()
    return target, still_working


def _credentials(keys: Keys, secret: Path) -> Credentials:
    return Credentials(load_certificate(secret), load_certificate(keys.server_public).public_key)


def _reply(client: Client, *frames: bytes) -> dict[str, object]:
    client.send_raw(*frames)
    data = client.receive_raw(30)
    assert data is not None
    return json.loads(data)


def test_bad_input_never_stops_the_agent_or_the_host(host, keys: Keys) -> None:
    target, still_working = host
    observer = _credentials(keys, keys.observer)

    with Client(target.tcp, _credentials(keys, keys.stranger), timeout=30) as stranger, \
            pytest.raises(AuthError, match="not authorized"):
        stranger.request("ping")
    assert still_working()

    ctx = zmq.Context()
    try:  # a client without CURVE: the handshake cannot even start
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(target.tcp)
        plain.send(b'{"prodbug": 1, "id": "p", "cmd": "ping"}')
        assert plain.poll(1000) == 0
        plain.close()
    finally:
        ctx.term()
    assert still_working()
    # What docs/security.md says of both: the stranger's refusal is audited as `denied`
    # with its fingerprint; the client without CURVE never reaches the key check and
    # leaves no record. The agent answers meanwhile.
    stranger_id = fingerprint(load_certificate(keys.stranger).public_key)
    with Client(target.tcp, _credentials(keys, keys.debugger), timeout=30) as admin:
        records = admin.request("audit", {"limit": 100})["records"]
    assert [(r["event"], r["key"]) for r in records if r["event"] != "request"] == [
        ("denied", stranger_id)], records
    admin_id = fingerprint(load_certificate(keys.debugger).public_key)
    assert {r["key_id"] for r in records if r["event"] == "request"} <= {admin_id}, records

    with Client(target.tcp, observer, timeout=30) as client:
        garbage = _reply(client, b"\x00\xffgarbage")
        assert garbage["error"]["code"] == "bad_request"  # type: ignore[index]
        two = _reply(client, b"{}", b"{}")
        assert "exactly one frame" in two["error"]["message"]  # type: ignore[index]
        version = _reply(client, b'{"prodbug": 2, "id": "v", "cmd": "stacks"}')
        assert (version["id"], version["error"]["code"]) == (  # type: ignore[index]
            "v", "version_mismatch")
        with pytest.raises(RemoteError, match='unknown command "reboot"') as info:
            client.request("reboot")
        assert info.value.code == "unknown_command"
        with pytest.raises(RemoteError, match="cpu_interval"):
            client.request("stacks", {"cpu_interval": "lots"})
        assert client.request("ping")["pid"] == target.pid
    assert still_working()

    with Client(target.tcp, observer, timeout=30) as big:  # above MAXMSGSIZE: dropped
        big.send_raw(b"x" * (128 * 1024))
        assert big.receive_raw(1.0) is None
    assert still_working()

    with socket.create_connection(("127.0.0.1", int(target.tcp.rsplit(":", 1)[1]))) as raw:
        raw.settimeout(30)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        try:  # the agent closes the connection: EOF or a reset, never a hang
            while raw.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert still_working()

    with Client(target.tcp, observer, timeout=30) as client:
        assert client.request("ping")["pid"] == target.pid
        stacks = client.request("stacks", {"cpu_interval": 0})
        assert {t["name"] for t in stacks["threads"]} >= {"worker-0", "worker-1", "counter"}
    assert target.proc.poll() is None
