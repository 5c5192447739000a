"""The TCP door: what unauthenticated peers, a forked child and a frozen host can do to the
port, and what the host pays for it (file descriptors, memory)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from typing import Any

import pytest
import zmq
from conftest import Keys, Target, run_cli, stop_target, wait_for

from prodbug.agent.door import MAX_CONNECTIONS, RECEIVE_HWM, DenialLimiter
from prodbug.agent.forkfds import release_inherited_port
from prodbug.client import Client, Credentials
from prodbug.errors import ProdbugError
from prodbug.keys import load_certificate

#: Run as the second local user (stdlib only). ``wave N`` on stdin: open N TCP connections
#: that never send a byte and wait until the agent's side has dealt with each (libzmq sent
#: its greeting, or the connection was refused or closed), then print ``WAVE held gone``;
#: ``close``: close every held one and print ``CLOSED``.
ATTACK = r"""
import errno, resource, select, socket, sys, time
_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port = sys.argv[1], int(sys.argv[2])
held = []
for line in sys.stdin:
    if line.startswith("close"):
        break
    wave, gone = {}, 0
    for _ in range(int(line.split()[1])):
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex((host, port)) in (0, errno.EINPROGRESS):
            wave[s.fileno()] = s
        else:
            gone += 1
            s.close()
    poller = select.poll()
    for fd in wave:
        poller.register(fd, select.POLLIN)
    # A SYN the backlog dropped is sent again a second later: 5 s covers that.
    deadline = time.monotonic() + 5
    while wave and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            poller.unregister(fd)
            s = wave.pop(fd)
            try:
                greeted = bool(s.recv(1, socket.MSG_PEEK))
            except OSError:
                greeted = False
            if greeted:
                held.append(s)
            else:
                gone += 1
                s.close()
    held.extend(wave.values())  # not dealt with in 5 s: held all the same
    print("WAVE", len(held), gone, flush=True)
for s in held:
    s.close()
print("CLOSED", flush=True)
"""


def _credentials(keys: Keys) -> Credentials:
    return Credentials(load_certificate(keys.observer),
                       load_certificate(keys.server_public).public_key)


def _answers(endpoint: str, credentials: Credentials | None, pid: int) -> bool:
    try:
        with Client(endpoint, credentials, timeout=2) as client:
            return client.request("ping")["pid"] == pid
    except ProdbugError:
        return False


def _count(target: Target) -> dict[str, int]:
    """The host's opener statistics (``count`` on its stdin)."""
    assert target.proc.stdin is not None
    seen = sum(line.startswith("COUNT ") for line in target.output)
    target.proc.stdin.write("count\n")
    target.proc.stdin.flush()
    assert wait_for(lambda: sum(ln.startswith("COUNT ") for ln in target.output) > seen)
    last = [ln for ln in target.output if ln.startswith("COUNT ")][-1]
    return dict(json.loads(last[len("COUNT "):]))


def _shut_lines(target: Target) -> list[str]:
    return [ln for ln in target.output if "not accepting TCP connections" in ln]


@pytest.mark.parametrize("case", [
    (None, f"{MAX_CONNECTIONS} TCP connections are open"),
    ("270", "file descriptors are free"),  # 270 free, 256 kept: it shuts before the cap
], ids=["cap", "headroom"])
def test_idle_connections_of_another_user_never_starve_the_host(
        spawn: Any, as_other: Any, agent_env: dict[str, str], keys: Keys,
        case: tuple[str | None, str]) -> None:
    free, reason = case
    env = {**agent_env, "FD_SOFT_LIMIT": "1024"}
    if free is not None:
        env["FREE_FDS"] = free
    target = spawn("fdhost", env=env)
    host, port = target.host_port.rsplit(":", 1)
    before = _count(target)

    attacker = as_other(ATTACK, host, port)
    assert attacker.stdout is not None and attacker.stdin is not None
    # 1,100 connections in waves of 50, the agent heard from (a local ping) after each:
    # the door reacts when the agent thread runs, and a host starved of CPU for longer
    # than libzmq takes to accept its headroom is beyond what the door promises
    # (prodbug/agent/door.py); the waves keep that race out of this test.
    for _ in range(22):
        attacker.stdin.write("wave 50\n")
        attacker.stdin.flush()
        wave = attacker.stdout.readline()
        assert wave.startswith("WAVE"), attacker.stderr.read() if attacker.stderr else ""
        assert _answers(target.facts["ipc"], None, target.pid)
    # The host goes on opening files while the attacker holds what it could open...
    assert wait_for(lambda: _count(target)["opened"] > before["opened"] + 200)
    during = _count(target)
    assert during["emfile"] == 0, (wave, during)  # ...and none of its open() calls fails,
    assert target.proc.poll() is None
    shut = _shut_lines(target)  # because the door shut, for this reason
    assert shut and reason in shut[0], shut
    attacker.stdin.write("close\n")
    attacker.stdin.flush()
    assert attacker.stdout.readline().strip() == "CLOSED"

    # The door opens again by itself: a legitimate client gets in, and so does a local one
    # (an ipc accept that finds no descriptor aborts the process inside libzmq).
    assert wait_for(lambda: _answers(target.tcp, _credentials(keys), target.pid), timeout=30)
    assert _answers(target.facts["ipc"], None, target.pid)
    assert _count(target)["emfile"] == 0
    assert len(_shut_lines(target)) == 1  # one warning for the episode, not one per cycle
    assert target.proc.poll() is None
    assert stop_target(target) == 0  # not 134 (SIGABRT)


def test_forked_child_lets_go_of_the_parents_port(spawn: Any,
                                                  agent_env: dict[str, str]) -> None:
    target = spawn("forking", env=agent_env)
    child = int(target.facts["child"])
    port = int(target.tcp.rsplit(":", 1)[1])
    listener = f"socket:[{_listening_inode(port)}]"
    try:
        assert listener in _fd_links(target.pid)
        assert listener not in _fd_links(child)  # /dev/null took its place there
        target.proc.kill()  # the parent dies; the child goes on
        target.proc.wait(10)
        assert _alive(child)
        with pytest.raises(ConnectionRefusedError):  # refused, not accepted-and-hung
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        assert _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_release_replaces_only_the_agents_own_sockets() -> None:
    # What a forked child does, run here on sockets of our own: the agent's listener and a
    # connection it accepted go; the same port on another address, UDP on the same port
    # and another port stay.
    with socket.socket() as agent, socket.socket() as other_address, \
            socket.socket(type=socket.SOCK_DGRAM) as udp, socket.socket() as other_port:
        agent.bind(("127.0.0.1", 0))
        agent.listen()
        port = agent.getsockname()[1]
        other_address.bind(("127.0.0.2", port))
        udp.bind(("127.0.0.1", port))
        other_port.bind(("127.0.0.1", 0))
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = agent.accept()
            with accepted:
                released = release_inherited_port(f"tcp://127.0.0.1:{port}")
                assert sorted(released) == sorted([agent.fileno(), accepted.fileno()])
                assert client.fileno() not in released  # its local port is another
                for sock in (agent, accepted):
                    assert os.readlink(f"/proc/self/fd/{sock.fileno()}") == os.devnull
                for sock in (other_address, udp, other_port, client):
                    assert os.readlink(f"/proc/self/fd/{sock.fileno()}").startswith("socket:")


def _fd_links(pid: int) -> set[str]:
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return links


def _listening_inode(port: int) -> str:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _memory_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def test_queued_requests_hold_bounded_memory(spawn: Any, agent_env: dict[str, str],
                                             keys: Keys) -> None:
    # The worst case the door lets in: as many authorized peers as it takes, each sending
    # 16 requests of ~1 MiB (the default MAXMSGSIZE) while a C call holds the GIL, so that
    # the agent reads none of them until it ends.
    peers, messages = MAX_CONNECTIONS - 1, 16
    target = spawn("regex", env={**agent_env, "REGEX_SECONDS": "4"})
    assert target.proc.stdin is not None
    credentials = _credentials(keys)
    pad = b"x" * ((1 << 20) - 1024)
    request = b'{"prodbug": 1, "id": "big", "cmd": "ping", "args": {"pad": "' + pad + b'"}}'
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets = []
    try:
        for _ in range(peers):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_publickey = credentials.client.public_key.encode()
            sock.curve_secretkey = (credentials.client.secret_key or "").encode()
            sock.curve_serverkey = credentials.server_key.encode()
            sock.connect(target.tcp)
            sockets.append(sock)
        for sock in sockets:  # every peer connected and authorized before the freeze
            sock.send(b'{"prodbug": 1, "id": "hello", "cmd": "ping"}')
            assert sock.poll(30_000) and b'"pong"' in sock.recv()
        start = _memory_kb(target.pid)["VmRSS"]
        target.proc.stdin.write("go\n")
        target.proc.stdin.flush()
        assert wait_for(lambda: any("REGEX STARTED" in ln for ln in target.output))
        for _ in range(messages):
            for sock in sockets:
                sock.send(request, flags=zmq.NOBLOCK)
        assert wait_for(lambda: any("REGEX DONE" in ln for ln in target.output), timeout=60)
        answered = [0]

        def all_answered() -> bool:
            for sock in sockets:
                while sock.poll(0):
                    answered[0] += b'"pong"' in sock.recv()
            return answered[0] == peers * messages

        assert wait_for(all_answered, timeout=60)  # nothing lost, only made to wait
        peak = _memory_kb(target.pid)["VmHWM"]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
    # Per connection: RECEIVE_HWM requests queued and one being read, plus a margin for
    # what libzmq (CURVE buffers) and the agent allocate around them.
    bound_kb = MAX_CONNECTIONS * (RECEIVE_HWM + 1) * 1024 + 32 * 1024
    assert peak - start < bound_kb, (start, peak, bound_kb)
    assert _answers(target.tcp, credentials, target.pid)


def test_frozen_host_says_so_instead_of_blaming_the_port_forward(
        spawn: Any, agent_env: dict[str, str], keys: Keys) -> None:
    # Far longer than the calls below (its length is calibrated, and load skews that);
    # the target is killed once they are done.
    target = spawn("regex", env={**agent_env, "REGEX_SECONDS": "30"})
    assert target.proc.stdin is not None
    target.proc.stdin.write("go\n")
    target.proc.stdin.flush()
    assert wait_for(lambda: any("REGEX STARTED" in line for line in target.output))
    env = {**agent_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
           "PRODBUG_SERVER_KEY": str(keys.server_public)}
    # 3 s: within the agent's handshake interval (5 s); 7 s: the agent drops the pending
    # handshake on the way, the client reconnects and must not call that a refusal.
    results: dict[str, Any] = {}
    calls = [threading.Thread(target=lambda t=t: results.__setitem__(t, run_cli(
        "info", target.host_port, "--timeout", t, env=env))) for t in ("3", "7")]
    for call in calls:
        call.start()
    for call in calls:
        call.join(60)
    for timeout, result in sorted(results.items()):
        assert result.returncode == 3, result.stderr
        assert f"connected to {target.host_port}" in result.stderr
        assert f"did not complete the handshake within {timeout}s" in result.stderr
        assert "holding the GIL" in result.stderr and "prodbug stacks --pid" in result.stderr
    assert len(results) == 2
    assert not any("REGEX DONE" in line for line in target.output)  # frozen all along
    target.proc.kill()


def test_denial_limiter_records_a_budget_then_one_summary() -> None:
    now = [0.0]
    limiter = DenialLimiter(budget=3, window=10.0, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limiter.take_suppressed() == 0  # the window is not over yet
    now[0] = 10.0
    assert limiter.take_suppressed() == 2
    assert limiter.take_suppressed() == 0  # counted once
    assert limiter.allow()
