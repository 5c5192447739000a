"""Attacks on one port per service: a second local user, an observer key, slow and stopped
links, misbehaving members, a loaded host. Real processes, real CURVE.
Each of the three holes found was first reproduced here (red), then closed."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import test_service
from conftest import Keys, stop_process, wait_for
from test_service import Service

from prodbug import protocol
from prodbug.agent.relay import MAX_PENDING, MAX_SESSION_LINKS
from prodbug.client import Client, Credentials
from prodbug.keys import load_certificate

make_service = test_service.make_service  # the fixture, shared


def _creds(keys: Keys, key: Any) -> Credentials:
    return Credentials(load_certificate(key), load_certificate(keys.server_public).public_key)


def _ask(client: Client, rid: str, cmd: str, pid: int | None = None,
         args: dict[str, Any] | None = None, *, timeout: float = 10) -> protocol.Reply:
    client.send_raw(protocol.encode_request(protocol.Request(rid, cmd, args or {}, pid=pid)))
    while True:
        data = client.receive_raw(timeout)
        assert data is not None, f"no reply to {cmd}"
        message = protocol.decode_message(data)
        if isinstance(message, protocol.Reply) and message.id == rid:
            return message


def test_links_of_gone_connections_do_not_lock_others_out(make_service: Callable[..., Service],
                                                          keys: Keys) -> None:
    service = make_service()
    _door, member = service.start(2)
    observer = _creds(keys, keys.observer)
    for n in range(MAX_SESSION_LINKS):  # each connection asks once, then goes away
        with Client(f"tcp://{service.address}", observer) as client:
            assert _ask(client, f"p{n}", "ping", member.pid).ok
    with Client(f"tcp://{service.address}", _creds(keys, keys.debugger)) as client:
        reply = _ask(client, "dbg", "ping", member.pid)
    assert reply.ok, reply.error


def test_a_hung_member_locks_out_no_one_else(make_service: Callable[..., Service],
                                             keys: Keys) -> None:
    """Operators who gave up on a stopped worker (a re-run `--all`, or an observer on
    purpose) fill that worker's link at most: the others answer on."""
    service = make_service()
    _door, hung, healthy = service.start(3)
    observer = _creds(keys, keys.observer)
    with _stopped(hung.pid):
        for n in range(MAX_PENDING + 8):
            with Client(f"tcp://{service.address}", observer, timeout=0.3) as client:
                client.send_request("ping", pid=hung.pid)
                client.gather({f"never-{n}"}, 0.05)
        with Client(f"tcp://{service.address}", _creds(keys, keys.debugger)) as client:
            reply = _ask(client, "dbg", "ping", healthy.pid)
        assert reply.ok, reply.error


def test_all_reaches_more_processes_than_one_link_table(
        spawn: Callable[..., Any], agent_env: dict[str, str], keys: Keys) -> None:
    """A pool larger than the session-link table (celery, multiprocessing): `--all` asks
    every process through one connection."""
    from conftest import free_port

    port = free_port()
    size = MAX_SESSION_LINKS + 6
    pool = spawn("fleet", env={**agent_env, "PRODBUG_LISTEN": f"tcp://127.0.0.1:{port}",
                               "FLEET_SIZE": str(size)})
    pids = {a["pid"] for a in pool.facts["agents"]}
    from prodbug.fanout import ask_all_through

    with Client(f"tcp://127.0.0.1:{port}", _creds(keys, keys.observer), timeout=30) as client:
        merged = ask_all_through(client, "stacks", {"cpu_interval": 0}, 30)
    assert merged["missing"] == []
    assert {p["pid"] for p in merged["processes"]} == pids


#: As the second user: hold the loopback port, answer every connection with a ZMTP 3.0
#: greeting offering MECHANISM (NULL: no keys at all), keep what arrives; EOF ends it.
SQUATTER = r"""
import socket, sys, threading
port, mechanism = int(sys.argv[1]), sys.argv[2].encode()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
got = []
def serve():
    while True:
        conn, _ = srv.accept()
        conn.settimeout(2)
        conn.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0])
                     + mechanism.ljust(20, b"\0") + bytes(32))
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got.append(data)
        except OSError:
            pass
        conn.close()
threading.Thread(target=serve, daemon=True).start()
print("BOUND", flush=True)
sys.stdin.read()
print("GOT", b"".join(got).hex(), flush=True)
"""


def _answered_by(service: Service, credentials: Credentials) -> int | None:
    """The pid that answers a ping on the service's port now, if any does."""
    try:
        with Client(f"tcp://{service.address}", credentials, timeout=2) as client:
            return int(client.request("ping")["pid"])
    except Exception:
        return None


@contextmanager
def _stopped(pid: int) -> Iterator[None]:
    stop_process(pid)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("mechanism", ["NULL", "CURVE"])
def test_a_squatter_on_the_port_after_the_door_dies_gets_nothing(
        make_service: Callable[..., Service], keys: Keys, as_other: Callable[..., Any],
        mechanism: str) -> None:
    service = make_service()
    door, member = service.start(2)
    with _stopped(member.pid):  # a member slow to wake (a loaded host): the race is lost
        door.proc.kill()
        door.proc.wait(10)
        squatter = as_other(SQUATTER, str(service.port), mechanism)
        assert squatter.stdout.readline().strip() == "BOUND", squatter.stderr.read()
        done = service.cli("stacks", service.address, "--pid", str(member.pid),
                           "--timeout", "3", "--cpu-interval", "0", key=keys.debugger)
        out, _ = squatter.communicate("", timeout=10)
    assert done.returncode != 0 and "idle_here" not in done.stdout
    print(done.returncode, done.stderr)
    got = bytes.fromhex(out.split("GOT ", 1)[1].strip())
    assert b"stacks" not in got and b"prodbug" not in got  # no request went out in the clear
    public = load_certificate(keys.debugger).public_key.encode()
    from zmq.utils import z85
    assert z85.decode(public) not in got  # nor the operator's long-term key
    # The squatter gone, the member takes the port over and serves the same key.
    credentials = _creds(keys, keys.debugger)
    assert wait_for(lambda: _answered_by(service, credentials) == member.pid)


def test_an_observer_reaches_no_debugger_command_on_any_process(
        make_service: Callable[..., Service], keys: Keys, as_other: Callable[..., Any]) -> None:
    service = make_service()
    door, member = service.start(2)
    stranger = as_other("import os, sys; print(os.getpid(), flush=True); sys.stdin.read()")
    stranger_pid = int(stranger.stdout.readline())
    with Client(f"tcp://{service.address}", _creds(keys, keys.observer)) as client:
        for pid in (member.pid, door.pid, None):
            for cmd, args in (("pdb.open", {"mode": "thread", "thread": "idle"}),
                              ("dap.open", {"confirm": True}), ("audit", {}),
                              ("session.input", {"session": "x", "data": "c"}),
                              ("dap.send", {"session": "x", "channel": "x", "data": ""})):
                reply = _ask(client, f"{cmd}-{pid}", cmd, pid, args)
                assert reply.error is not None and reply.error.code == "forbidden", reply
            refused = _ask(client, f"redact-{pid}", "stacks", pid,
                           {"locals": 1, "redact": False, "cpu_interval": 0})
            assert refused.error is not None and refused.error.code == "forbidden", refused
        # Names the door does not know are passed on, and the member knows them no better.
        for cmd in ("PDB.OPEN", "pdb.open ", "pdb.open\x00", "pdb.open" + "x" * 200):
            reply = _ask(client, f"odd-{len(cmd)}", cmd, member.pid)
            assert reply.error is not None and reply.error.code == "unknown_command", reply
        # A nested request (the relayed one carries pid and via in its args) is only data.
        reply = _ask(client, "nested", "ping", member.pid,
                     {"pid": door.pid, "via": {"key": "k", "name": "n", "role": "debugger",
                                               "door": door.pid}})
        assert reply.ok and reply.result == {"pong": True, "pid": member.pid}
        # Another user's process is no member, whatever its pid.
        reply = _ask(client, "stranger", "ping", stranger_pid)
        assert reply.error is not None and reply.error.code == "no_member", reply
    stranger.communicate("", timeout=10)
    # The member's audit names the observer for every refusal it made, none as debugger.
    audit = service.cli("audit", service.address, "--pid", str(member.pid), "--json",
                        key=keys.debugger)
    records = [r for r in json.loads(audit.stdout)["records"] if r.get("via") == door.pid]
    assert records and {r["role"] for r in records if r["key"] == "alice"} == {"observer"}



#: What door.py documents as all that peers can make the host hold (32 x 5 x 1 MiB).
DOOR_BOUND = 160 << 20


def test_an_observer_cannot_make_the_door_hold_more_than_its_bound(
        make_service: Callable[..., Service], keys: Keys) -> None:
    import psutil

    service = make_service()
    door, member = service.start(2)
    rss = psutil.Process(door.pid).memory_info().rss
    pad = "x" * ((1 << 20) - 300)  # each request as large as the door takes
    clients = [Client(f"tcp://{service.address}", _creds(keys, keys.observer))
               for _ in range(4)]
    try:
        for c, client in enumerate(clients):
            # A stack dump sleeps a second in the member's agent: it falls behind at once.
            for i in range(64):
                client.send_raw(protocol.encode_request(protocol.Request(
                    f"{c}-{i}", "stacks", {"cpu_interval": 1.0, "pad": pad}, pid=member.pid)))
        answered = 0

        def settled() -> bool:  # every request is either held by the door or answered
            nonlocal answered
            for client in clients:
                while client.receive_raw(0) is not None:
                    answered += 1
            return int(watcher.request("info")["agent"]["relayed_pending"]) + answered \
                >= 4 * 64
        with Client(f"tcp://{service.address}", _creds(keys, keys.observer)) as watcher:
            assert wait_for(settled)
        held = psutil.Process(door.pid).memory_info().rss - rss
    finally:
        for client in clients:
            client.close()
    assert held < DOOR_BOUND, f"the door holds {held >> 20} MiB more"


def test_under_load_a_member_takes_over_and_a_stopped_one_is_named(
        make_service: Callable[..., Service], keys: Keys) -> None:
    import subprocess
    import sys

    service = make_service()
    door, stopped, live = service.start(3)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with _stopped(stopped.pid):
            door.proc.kill()
            door.proc.wait(10)
            credentials = _creds(keys, keys.observer)
            assert wait_for(lambda: _answered_by(service, credentials) == live.pid,
                            timeout=60)
            done = service.cli("stacks", service.address, "--all", "--json",
                               "--cpu-interval", "0", "--timeout", "3", key=keys.observer)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert [p["pid"] for p in merged["processes"]] == [live.pid]
    assert merged["missing"] == [{"pid": stopped.pid, "reason": "no reply within 3s"}]


def test_a_member_does_not_widen_its_own_allow_list(make_service: Callable[..., Service],
                                                    keys: Keys, tmp_path: Any) -> None:
    service = make_service()
    door = service.start(1)[0]
    observers_only = tmp_path / "observers-only"
    observers_only.mkdir()
    alice = next(keys.authorized.glob("alice*"))
    (observers_only / alice.name).write_bytes(alice.read_bytes())
    strict = service.spawn("member", env={**service.env,
                                          "PRODBUG_AUTHORIZED_KEYS": str(observers_only)})
    assert strict.facts["role"] == "member"
    with Client(f"tcp://{service.address}", _creds(keys, keys.debugger)) as client:
        reply = _ask(client, "audit", "audit", strict.pid)  # bob is not in its list at all
    assert door.facts["role"] == "door"
    assert reply.error is not None and reply.error.code == "forbidden", reply
