"""Issue #10's attacks, each performed against a real agent: none may succeed.

A second local uid (``as_other``: stdlib Python, no prodbug code) where the attacker is a
local user; keys of our own where the attacker holds one.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import json.encoder
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import (
    TARGETS,
    Keys,
    Request,
    Target,
    count,
    run_cli,
    still_counting,
    wait_for,
)
from dapclient import DapClient
from test_pdb import PROMPT
from test_vscode import SERVICE, WORK_LINE, _stopped_in

from prodbug.client import Client, Credentials
from prodbug.errors import AuthError
from prodbug.keys import load_certificate, write_certificate_pair

LOG_LINE = next(n for n, text in enumerate(
    (TARGETS / "service.py").read_text().splitlines(), 1) if "# LOG-BREAK" in text)

#: Run as the other uid: try DAP ``initialize`` on each port given; print the ports that
#: answered like a debugger.
DAP_PROBE = r"""
import json, socket, sys
answered = []
for port in map(int, sys.argv[1:]):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                           "arguments": {"adapterID": "debugpy", "clientID": "x"}}).encode()
        s.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = s.recv(65536)
        if b"Content-Length" in data and b'"type"' in data:
            answered.append(port)
        s.close()
    except OSError:
        pass
print(json.dumps(answered))
"""


def _listening() -> set[int]:
    """Every TCP port in LISTEN state on this host (network namespace)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _client_env(env: dict[str, str], keys: Keys, secret: Path) -> dict[str, str]:
    return {**env, "PRODBUG_CLIENT_SECRET_KEY": str(secret),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


# -- 1. no keyless debugger on loopback ---------------------------------------------------------

def test_vscode_leaves_no_port_a_local_user_can_attach_to(service: Target, vscode, base_env,
                                                           as_other) -> None:
    before = _listening()
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    port = cli_.port()
    dap = DapClient(port)
    dap.attach({SERVICE: [WORK_LINE]})
    thread, _frame = _stopped_in(dap, "work")  # a real session is up and a thread stopped
    new = sorted(_listening() - before - {port})
    probe = as_other(DAP_PROBE, *map(str, new))
    out, err = probe.communicate(timeout=60)
    assert json.loads(out) == [], f"a debugger answered another uid on {out}: {err}"
    dap.request("continue", threadId=thread)
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()
    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["agent"]["debugpy"] == "ready"
    assert "debugpy_port" not in info["agent"]  # nothing to tell an observer about


# -- 2. the operator's port serves the operator only -------------------------------------------

def test_vscode_port_refuses_other_local_users(service: Target, vscode, as_other) -> None:
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    port = cli_.port()
    probe = as_other(DAP_PROBE, str(port))
    out, err = probe.communicate(timeout=60)
    assert json.loads(out) == [], err
    assert wait_for(lambda: any("refused a connection from uid" in ln for ln in cli_.err))
    dap = DapClient(port)  # the operator still attaches
    dap.attach({})
    assert "worker" in [t["name"] for t in dap.request("threads")["threads"]]
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()


# -- 4. pdb never stops the agent ---------------------------------------------------------------

def _line_of(function: object, text: str) -> tuple[str, int]:
    lines, first = inspect.getsourcelines(function)  # type: ignore[arg-type]
    offset = next(i for i, line in enumerate(lines) if text in line)
    return inspect.getsourcefile(function) or "", first + offset  # type: ignore[arg-type]


def test_a_breakpoint_on_the_agents_own_code_never_stops_it(service: Target, cli,
                                                            base_env) -> None:
    path, line = _line_of(json.encoder.JSONEncoder.encode, "chunks = self.iterencode(")
    child = cli("pdb", "--pid", str(service.pid), "--break", f"json/encoder.py:{line}")
    child.expect("waiting for a thread to reach it")
    for _ in range(3):  # every reply is json-encoded in the agent thread
        result = run_cli("info", "--pid", str(service.pid), "--json", env=base_env)
        assert result.returncode == 0, result.stderr
    # The session is still waiting: it neither stopped the agent nor had to be rescued.
    assert child.isalive()
    seen = child.logfile_read.getvalue()
    assert "stopped thread" not in seen and "session ended" not in seen, seen
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    assert os.path.exists(path)


@pytest.mark.parametrize("propagate", ["0", "1"])
def test_a_thread_stopped_in_the_hosts_log_handler_never_blocks_the_agent(
        spawn, base_env, tmp_path: Path, cli, propagate: str) -> None:
    # With PRODBUG_AUDIT_PROPAGATE=1 the agent's audit records do go through the host's
    # handler, whose lock the stopped thread holds: the agent blocks, and only the
    # watchdog (not the agent's loop) can end the session when its operator is gone.
    env = {**base_env, "COUNTER_FILE": str(tmp_path / "counter"),
           "PRODBUG_SESSION_HEARTBEAT": "2", "PRODBUG_AUDIT_PROPAGATE": propagate}
    target = spawn("service", env=env)
    target.facts["counter"] = str(tmp_path / "counter")
    child = cli("pdb", "--pid", str(target.pid), "--break", f"service.py:{LOG_LINE}")
    child.expect("waiting for a thread to reach it")
    request = Request(target.facts["http"] + "/log")
    request.start()
    child.expect(PROMPT)  # that thread holds the root handler's lock now
    if propagate == "0":
        for _ in range(3):
            result = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
            assert result.returncode == 0, result.stderr
        child.sendline("c")
        child.expect(pexpect.EOF)
    else:
        # This reply goes out, then its audit record waits for the handler's lock: the
        # agent thread is stuck until the stopped thread goes on.
        assert run_cli("info", "--pid", str(target.pid), env=base_env).returncode == 0
        child.kill(signal.SIGKILL)  # the operator vanishes while the agent is stuck
        child.wait()
    request.join(60)
    assert request.result == (200, "hello /log")
    assert still_counting(target)
    assert run_cli("info", "--pid", str(target.pid), env=base_env).returncode == 0


# -- 8. identity: sessions belong to keys, names come from the allow-list ----------------------

@pytest.fixture
def twin_keys(tmp_path: Path, keys: Keys) -> tuple[Path, Path, Path]:
    """An allow-list with bob and an impostor whose certificate also says name=bob."""
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(keys.authorized / "alice.key", authorized)
    shutil.copy(keys.root / "clients" / "bob.key", authorized)
    public, secret = write_certificate_pair(tmp_path / "twin", "bob", "debugger")
    shutil.copy(public, authorized / "impostor.key")
    return authorized, keys.debugger, secret


def test_a_key_cannot_use_another_keys_session_even_with_its_name(spawn, agent_env, keys: Keys,
                                                                   twin_keys, base_env) -> None:
    authorized, bob_secret, impostor_secret = twin_keys
    target = spawn("service", env={**agent_env, "PRODBUG_AUTHORIZED_KEYS": str(authorized)})
    server = load_certificate(keys.server_public).public_key
    bob = Client(target.tcp, Credentials(load_certificate(bob_secret), server), timeout=30)
    impostor = Client(target.tcp, Credentials(load_certificate(impostor_secret), server),
                      timeout=30)
    try:
        opened = bob.request("pdb.open", {"mode": "inspect", "thread": "worker"})
        with pytest.raises(AuthError, match="another key"):
            impostor.request("session.input", {"session": opened["session"], "data": "p 1"})
        with pytest.raises(AuthError, match="another key"):
            impostor.request("session.close", {"session": opened["session"]})
        observer = _client_env(base_env, keys, keys.observer)
        dump = json.loads(run_cli("stacks", target.host_port, "--json", env=observer).stdout)
        names = [t["name"] for t in dump["processes"][0]["threads"]]
        assert not any(opened["session"] in name for name in names), names
        bob.request("session.close", {"session": opened["session"]})
        records = bob.request("audit")["records"]
    finally:
        bob.close()
        impostor.close()
    who = {(r.get("key"), r.get("key_id")) for r in records if r.get("cmd") == "session.input"}
    assert len(who) == 1 and next(iter(who))[0] == "impostor"  # the file's name, not "bob"


# -- 9 and 14. the audit trail: private, not forgeable ------------------------------------------

def test_audit_file_is_private_links_are_not_followed_and_fields_are_escaped(
        spawn, agent_env, keys: Keys, base_env, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    decoy = tmp_path / "decoy"
    decoy.write_text("")
    planted = tmp_path / "planted.jsonl"
    planted.symlink_to(decoy)
    target = spawn("service", env={**agent_env, "PRODBUG_AUDIT_LOG": str(audit)})
    forged = "reboot\nprodbug.audit INFO request key=admin cmd=stacks outcome=ok"
    with Client(target.tcp, Credentials(load_certificate(keys.observer),
                                        load_certificate(keys.server_public).public_key),
                timeout=30) as client:
        client.send_raw(json.dumps({"prodbug": 1, "id": "x", "cmd": forged}).encode())
        assert client.receive_raw(30) is not None
    assert wait_for(lambda: audit.exists() and "reboot" in audit.read_text())
    assert oct(audit.stat().st_mode & 0o777) == oct(0o600)
    lines = audit.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # one record per line, none forged
    record = next(json.loads(line) for line in lines if "reboot" in line)
    assert "\n" not in record["cmd"] and "\\n" in record["cmd"]
    assert "key=admin" not in "".join(target.output)  # nothing reached the host's own log

    linked = spawn("service", env={**agent_env, "PRODBUG_AUDIT_LOG": str(planted)})
    env = _client_env(base_env, keys, keys.observer)
    assert run_cli("info", linked.host_port, env=env).returncode == 0
    assert decoy.read_text() == ""  # the agent did not write through the planted link


# -- 10. a slow link loses nothing ---------------------------------------------------------------

class _SlowProxy:
    """A TCP forwarder whose agent-to-client direction runs at about ``rate`` bytes/s."""

    def __init__(self, upstream: int, rate: int) -> None:
        import threading

        self.upstream, self.rate = upstream, rate
        self.flowing = threading.Event()  # cleared: the link stalls (reads nothing)
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket()
            # Small buffers, as on a real slow link: the agent's side fills up, instead of
            # the kernel soaking up megabytes on loopback.
            up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            up.connect(("127.0.0.1", self.upstream))
            self.sockets += [down, up]
            for src, dst, slow in ((down, up, False), (up, down, True)):
                threading.Thread(target=self._pump, args=(src, dst, slow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        import time

        chunk = 16 * 1024 if slow else 256 * 1024
        try:
            while (not slow or self.flowing.wait()) and (data := src.recv(chunk)):
                dst.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)  # the link's speed is what we simulate
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def slow_proxy() -> Iterator[type[_SlowProxy]]:
    made: list[_SlowProxy] = []

    def make(upstream: int, rate: int) -> _SlowProxy:
        proxy = _SlowProxy(upstream, rate)
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.close()


@pytest.fixture
def tcp_service(spawn, agent_env: dict[str, str], tmp_path: Path) -> Target:
    target: Target = spawn("service",
                           env={**agent_env, "COUNTER_FILE": str(tmp_path / "counter")})
    return target


def test_a_slow_operator_link_loses_no_reply(tcp_service: Target, keys: Keys, base_env, vscode,
                                             slow_proxy) -> None:
    target = tcp_service
    proxy = slow_proxy(int(target.host_port.rsplit(":", 1)[1]), 2 << 20)
    env = _client_env(base_env, keys, keys.debugger)
    started = vscode(f"127.0.0.1:{proxy.port}", "--port", "0", "--yes", env=env)
    dap = DapClient(started.port())
    dap.attach({SERVICE: [WORK_LINE]})
    thread, frame = _stopped_in(dap, "work")
    # The link stalls while 40 replies of 100 KB are produced: the agent's pipe to this
    # operator fills up (a ROUTER would drop the rest silently), and what cannot go waits
    # in the agent's outbox until the link moves again at 2 MB/s.
    proxy.flowing.clear()
    sent = [dap.send("evaluate", expression="'x' * 100000", frameId=frame["id"],
                     context="clipboard") for _ in range(40)]
    observer = _client_env(base_env, keys, keys.observer)

    def backed_up() -> bool:
        out = run_cli("info", target.host_port, "--json", env=observer).stdout
        return bool(out) and json.loads(out)["agent"]["outbound_queued"] > 0

    assert wait_for(backed_up, timeout=60)
    proxy.flowing.set()
    replies = [dap.response(seq) for seq in sent]
    assert [r.get("success") for r in replies] == [True] * 40
    assert all(len(r["body"]["result"]) >= 100000 for r in replies)
    dap.request("continue", threadId=thread)
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()


# -- 11. the host's children stay its own --------------------------------------------------------

def test_after_vscode_the_hosts_python_children_get_no_debugger(service: Target,
                                                                 vscode) -> None:
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    dap = DapClient(cli_.port())
    dap.attach({})
    request = Request(service.facts["http"] + "/spawn")
    request.start()
    request.join(90)
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()
    assert request.result == (200, "hello [] []")


def _stop_the_worker_once(dap: DapClient) -> None:
    """A whole VS Code session: attach, stop the running worker, let it go, detach."""
    dap.attach({SERVICE: [WORK_LINE]})
    thread, _frame = _stopped_in(dap, "work")
    dap.request("continue", threadId=thread)
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()


# -- 16. a connection that closes before its channel opens orphans nothing ----------------------

def test_a_port_check_before_attach_leaves_nothing_behind(service: Target, vscode) -> None:
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    port = cli_.port()
    for _ in range(3):  # a port check, a cancelled attach
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    _stop_the_worker_once(DapClient(port))
    assert still_counting(service)
    assert count(service) > 0


# -- a revoked key ---------------------------------------------------------------------------------

def test_a_removed_key_is_refused_at_once_on_open_and_new_connections(spawn, agent_env,
                                                                      keys: Keys,
                                                                      tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    shutil.copytree(keys.authorized, authorized)
    target = spawn("service", env={**agent_env, "PRODBUG_AUTHORIZED_KEYS": str(authorized)})
    creds = Credentials(load_certificate(keys.debugger),
                        load_certificate(keys.server_public).public_key)
    with Client(target.tcp, creds, timeout=30) as client:
        assert client.request("ping")["pid"] == target.pid
        (authorized / "bob.key").unlink()
        refused: list[str] = []

        def refused_now() -> bool:  # the agent looks at the files every 0.5 s at most
            try:
                client.request("ping")
            except AuthError as exc:
                refused.append(str(exc))
            return bool(refused)

        assert wait_for(refused_now, timeout=10)
        assert "no longer authorized" in refused[0]
    with Client(target.tcp, creds, timeout=30) as fresh, \
            pytest.raises(AuthError, match="not authorized"):
        fresh.request("ping")


def test_an_orphaned_channel_never_blocks_the_next_attach(service: Target,
                                                          runtime_dir: Path) -> None:
    """The agent's side of item 16, with no race: a channel nobody uses or closes (its VS
    Code went away before the answer came) is replaced by the next attach."""
    import base64
    import time

    from prodbug import protocol

    with Client(f"ipc://{runtime_dir}/{service.pid}.sock", timeout=30) as client:
        session = client.request("dap.open", {"confirm": True})["session"]
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline:
            client.send_request("session.ping", {"session": session})
            message = client.poll_message(0.5)
            ready = isinstance(message, protocol.Event) and message.kind == "dap_ready"
        assert ready
        client.request("dap.connect", {"session": session})  # orphaned: never used or closed
        channel = client.request("dap.connect", {"session": session})["channel"]
        body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                           "arguments": {"adapterID": "debugpy"}}).encode()
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
        client.request("dap.send", {"session": session, "channel": channel,
                                    "data": base64.b64encode(framed).decode()})
        stream = b""
        while b'"command": "initialize"' not in stream and time.monotonic() < deadline:
            message = client.poll_message(0.5)
            if isinstance(message, protocol.Event) and message.kind == "dap":
                assert message.data["channel"] == channel
                stream += base64.b64decode(message.data["data"])
        assert b'"success": true' in stream and b'"command": "initialize"' in stream
        client.request("session.close", {"session": session})


# -- what a VS Code client sends cannot break the debugger for the next one ---------------------

def test_a_header_read_two_ways_cannot_desynchronise_the_debugger(service: Target,
                                                                   vscode) -> None:
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    port = cli_.port()
    dap = DapClient(port)
    dap.attach({SERVICE: [WORK_LINE]})
    _stopped_in(dap, "work")
    # One reading takes 2 bytes, pydevd's would take 100000 and swallow all that follows.
    dap.sock.sendall(b"Content-Length: 100000\r\ncontent-length: 2\r\n\r\n{}")
    assert wait_for(lambda: any("stream failed" in line for line in cli_.err))
    dap.close()
    assert still_counting(service)  # the agent's own disconnect reached pydevd whole
    _stop_the_worker_once(DapClient(port))


def test_a_thread_id_pydevd_never_gave_is_refused_not_fatal(service: Target, vscode,
                                                            base_env) -> None:
    cli_ = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    dap = DapClient(cli_.port())
    dap.request("initialize", clientID="vscode", adapterID="debugpy")
    attach = dap.send("attach", justMyCode=False, redirectOutput=True,
                      debugOptions=["RedirectOutput"])
    dap.event("initialized")
    dap.request("configurationDone")
    assert dap.response(attach)["success"]
    for bad in (0, "7", 10**30):
        response = dap.response(dap.send("pause", threadId=bad))
        assert response["success"] is False and "prodbug refused it" in response["message"]
    # redirectOutput would replace the host's sys.stdout/stderr: it is turned off.
    request = Request(service.facts["http"] + "/print")
    request.start()
    request.join(60)
    assert request.result == (200, "hello /print")
    threads = dap.request("threads")["threads"]
    assert "worker" in [t["name"] for t in threads]
    dap.request("evaluate", expression="1", context="repl")  # one more round trip
    captured = [m for m in dap.backlog if m.get("event") == "output" and
                "a request printed this" in str(m.get("body"))]
    assert captured == []  # the host's stderr stayed the host's
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()
    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["agent"]["debugpy"] == "ready"  # pydevd is alive for the next attach
    assert wait_for(lambda: any("a request printed this" in line for line in service.output))


def test_a_refused_client_never_hangs_on_its_next_request(tcp_service: Target,
                                                          keys: Keys) -> None:
    """After a refused handshake the client's socket has no connection to queue on: a
    blocking send would wait for ever (seen as a hung reliability-test thread)."""
    from prodbug.errors import ProdbugError

    stranger = Credentials(load_certificate(keys.stranger),
                           load_certificate(keys.server_public).public_key)
    with Client(tcp_service.tcp, stranger, timeout=3) as client:
        for _ in range(3):
            with pytest.raises(ProdbugError):  # AuthError or TargetUnreachable, in time
                client.request("ping")
