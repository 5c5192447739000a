"""One port for a whole service: the door relays to its members, and a member takes the port
over when the door dies. Real processes, the real CLI, CURVE over TCP."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest
from conftest import TARGETS, Keys, Target, free_port, run_cli, stop_process, wait_for
from dapclient import DapClient

from prodbug.client import Client, Credentials
from prodbug.errors import ProdbugError
from prodbug.keys import load_certificate, write_certificate_pair

MEMBER = str(TARGETS / "member.py")
TICK_LINE = next(n for n, text in enumerate((TARGETS / "member.py").read_text().splitlines(), 1)
                 if text.strip() == "ticks += 1")



class Service:
    """Processes of one service (tests/targets/member.py) behind one fixed port."""

    def __init__(self, spawn: Callable[..., Target], env: dict[str, str],
                 client_env: Callable[[Path], dict[str, str]], port: int) -> None:
        self.spawn, self.env, self.client_env, self.port = spawn, env, client_env, port
        self.processes: list[Target] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, n: int = 1) -> list[Target]:
        started = [self.spawn("member", env=self.env) for _ in range(n)]
        self.processes += started
        return started

    def cli(self, *args: str, key: Path, timeout: float = 60) -> Any:
        return run_cli(*args, env=self.client_env(key), timeout=timeout)

    def ps(self, key: Path) -> dict[str, Any]:
        done = self.cli("ps", self.address, "--json", key=key)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


@pytest.fixture
def make_service(spawn: Callable[..., Target], agent_env: dict[str, str],
                 base_env: dict[str, str], keys: Keys) -> Callable[..., Service]:
    def make(server_public: Path = keys.server_public, server_secret: Path = keys.server_secret,
             authorized: Path = keys.authorized) -> Service:
        port = free_port()
        env = {**agent_env, "PRODBUG_LISTEN": f"tcp://127.0.0.1:{port}",
               "PRODBUG_SERVER_SECRET_KEY": str(server_secret),
               "PRODBUG_AUTHORIZED_KEYS": str(authorized)}

        def client_env(key: Path) -> dict[str, str]:
            return {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(key),
                    "PRODBUG_SERVER_KEY": str(server_public)}

        return Service(spawn, env, client_env, port)

    return make


@pytest.fixture
def three(make_service: Callable[..., Service]) -> Service:
    """A door and two members, started one after another (as spawned workers are)."""
    service = make_service()
    service.start(3)
    return service


def test_one_port_reaches_every_process(three: Service, keys: Keys) -> None:
    door, first, second = three.processes
    assert [p.facts["role"] for p in three.processes] == ["door", "member", "member"]
    assert {p.facts["service"] for p in three.processes} == {three.address}

    listed = three.ps(keys.observer)
    assert listed["service"] == three.address
    assert [(a["pid"], a["role"]) for a in listed["agents"]] == [
        (door.pid, "door"), (first.pid, "member"), (second.pid, "member")]
    assert all(a["threads"] and a["rss_bytes"] for a in listed["agents"])

    one = three.cli("stacks", three.address, "--pid", str(second.pid), "--json",
                    "--cpu-interval", "0", key=keys.observer)
    assert one.returncode == 0, one.stderr
    (process,) = json.loads(one.stdout)["processes"]
    assert process["pid"] == second.pid and process["role"] == "member"
    assert any(f["function"] == "idle_here" for t in process["threads"] for f in t["frames"])

    every = three.cli("stacks", three.address, "--all", "--json", "--cpu-interval", "0",
                      key=keys.observer)
    assert every.returncode == 0, every.stderr
    merged = json.loads(every.stdout)
    assert [p["pid"] for p in merged["processes"]] == [door.pid, first.pid, second.pid]
    assert merged["missing"] == []
    text = three.cli("stacks", three.address, "--all", "--cpu-interval", "0",
                     key=keys.observer, timeout=60)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("idle_here") == 1  # one stack, shown once for the three
    assert all(str(p.pid) in text.stdout for p in three.processes)

    # The member audits the request under the operator's key, naming the door.
    audit = three.cli("audit", three.address, "--pid", str(second.pid), "--json",
                      key=keys.debugger)
    assert audit.returncode == 0, audit.stderr
    served = [r for r in json.loads(audit.stdout)["records"] if r.get("cmd") == "stacks"]
    assert served and served[0]["key"] == "alice" and served[0]["role"] == "observer"
    assert served[0]["pid"] == second.pid and served[0]["via"] == door.pid


def test_the_role_is_the_operators_on_every_member(three: Service, keys: Keys) -> None:
    member = three.processes[1]
    refused = three.cli("pdb", three.address, "--pid", str(member.pid), "--thread", "idle",
                        key=keys.observer)
    assert refused.returncode == 4, refused.stderr
    assert "needs the debugger role" in refused.stderr
    # "via" is the door's to set: a client that sends it over TCP is refused.
    credentials = Credentials(load_certificate(keys.observer),
                              load_certificate(keys.server_public).public_key)
    from prodbug import protocol

    with Client(f"tcp://{three.address}", credentials) as client:
        client.send_raw(protocol.encode_request(protocol.Request(
            "forged", "pdb.open", {"mode": "thread", "thread": "idle"}, pid=member.pid,
            via={"key": "x", "name": "bob", "role": "debugger", "door": 1})))
        reply = protocol.decode_reply(client.receive_raw(10) or b"")
    assert reply.error is not None and reply.error.code == "bad_request"
    assert "via" in reply.error.message


def test_pdb_on_a_member_through_the_door(three: Service, keys: Keys,
                                          cli: Callable[..., pexpect.spawn]) -> None:
    member = three.processes[2]
    child = cli("pdb", three.address, "--pid", str(member.pid), "--thread", "ticker",
                env=three.client_env(keys.debugger))
    child.expect("stopped thread 'ticker'")
    child.expect(r"\(Pdb\) ")
    child.sendline("p __import__('os').getpid()")
    child.expect(rf"\r\n{member.pid}\r\n")
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_vscode_on_a_member_through_the_door(three: Service, keys: Keys, vscode: Any) -> None:
    member = three.processes[1]
    cli = vscode(three.address, "--pid", str(member.pid), "--port", "0", "--yes",
                 env=three.client_env(keys.debugger))
    dap = DapClient(cli.port())
    dap.attach({MEMBER: [TICK_LINE]})
    stopped = dap.event("stopped")["body"]
    frames = dap.request("stackTrace", threadId=stopped["threadId"], startFrame=0,
                         levels=5)["stackFrames"]
    assert (frames[0]["name"], frames[0]["line"]) == ("tick", TICK_LINE)
    assert dap.request("evaluate", expression="__import__('os').getpid()",
                       frameId=frames[0]["id"], context="repl")["result"] == str(member.pid)
    dap.set_breakpoints(MEMBER, [])
    dap.request("continue", threadId=stopped["threadId"])
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()
    listed = {a["pid"]: a for a in three.ps(keys.observer)["agents"]}
    assert listed[member.pid]["debugpy"] == "ready"  # in that member, and only there
    assert {listed[p.pid]["debugpy"] for p in three.processes if p is not member} == {"off"}


@pytest.mark.parametrize("which", ["stranger", "dead", "door"])
def test_pid_that_is_not_a_member(three: Service, keys: Keys, which: str) -> None:
    door, member, _ = three.processes
    if which == "stranger":
        pid = os.getpid()  # alive, ours, but no member of the service
    elif which == "dead":
        pid = member.pid
        member.proc.kill()
        member.proc.wait(10)
    else:
        pid = door.pid
    done = three.cli("stacks", three.address, "--pid", str(pid), "--json", "--cpu-interval",
                     "0", key=keys.observer)
    if which == "door":  # the door serves itself
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["processes"][0]["pid"] == door.pid
        return
    assert done.returncode == 1
    assert f"process {pid} is not a live member" in done.stderr
    assert str(door.pid) in done.stderr  # the members are named


def test_a_hung_member_is_named_not_awaited(three: Service, keys: Keys) -> None:
    door, hung, other = three.processes
    stop_process(hung.pid)
    try:
        done = three.cli("stacks", three.address, "--all", "--json", "--cpu-interval", "0",
                         "--timeout", "3", key=keys.observer)
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert [p["pid"] for p in merged["processes"]] == [door.pid, other.pid]
    assert merged["missing"] == [{"pid": hung.pid, "reason": "no reply within 3s"}]


def test_door_killed_a_member_takes_the_port_over(three: Service, keys: Keys) -> None:
    door, first, second = three.processes
    credentials = Credentials(load_certificate(keys.observer),
                              load_certificate(keys.server_public).public_key)

    def answered_by() -> int | None:
        try:
            with Client(f"tcp://{three.address}", credentials, timeout=2) as client:
                return int(client.request("ping")["pid"])
        except ProdbugError:
            return None

    os.kill(door.pid, signal.SIGKILL)
    door.proc.wait(10)
    assert wait_for(lambda: answered_by() in (first.pid, second.pid))
    new = answered_by()
    listed = three.ps(keys.observer)
    assert sorted((a["pid"], a["role"]) for a in listed["agents"]) == sorted(
        [(new, "door"), *((p.pid, "member") for p in (first, second) if p.pid != new)])
    # The one left follows the new door: a second death moves the port again.
    os.kill(new or 0, signal.SIGKILL)
    last = next(p for p in (first, second) if p.pid != new)
    assert wait_for(lambda: answered_by() == last.pid)


def test_two_services_on_one_host_stay_apart(make_service: Callable[..., Service],
                                             keys: Keys, tmp_path: Path) -> None:
    other_public, other_secret = write_certificate_pair(tmp_path / "b", "server-b")
    authorized = tmp_path / "b-authorized"
    authorized.mkdir()
    public_b, secret_b = write_certificate_pair(tmp_path / "b-clients", "carol", "debugger")
    shutil.copy(public_b, authorized / public_b.name)
    a = make_service()
    b = make_service(other_public, other_secret, authorized)
    (_a_door, a_member) = a.start(2)
    (b_door, b_member) = b.start(2)
    assert a_member.facts["role"] == b_member.facts["role"] == "member"
    # B's door does not reach A's member, and A's key does not open B's door.
    done = b.cli("stacks", b.address, "--pid", str(a_member.pid), "--json", key=secret_b)
    assert done.returncode == 1 and "not a live member" in done.stderr
    assert [x["pid"] for x in b.ps(secret_b)["agents"]] == [b_door.pid, b_member.pid]
    refused = b.cli("ps", b.address, "--timeout", "3", key=keys.observer)
    assert refused.returncode in (3, 4), refused.stderr



def test_forked_child_of_the_door_is_a_member(spawn: Callable[..., Target],
                                              make_service: Callable[..., Service],
                                              keys: Keys) -> None:
    service = make_service()
    parent = spawn("forking", env=service.env)
    child = int(parent.facts["child"])
    assert wait_for(lambda: [(a["pid"], a["role"]) for a in service.ps(keys.observer)[
        "agents"]] == [(parent.pid, "door"), (child, "member")])
    done = service.cli("stacks", service.address, "--pid", str(child), "--json",
                       "--cpu-interval", "0", key=keys.observer)
    assert done.returncode == 0, done.stderr
    (proc,) = json.loads(done.stdout)["processes"]
    assert proc["pid"] == child
    assert any(t["name"] == "child-worker" for t in proc["threads"])


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_an_injected_process_joins_the_service(make_service: Callable[..., Service],
                                               keys: Keys, base_env: dict[str, str]) -> None:
    import subprocess
    import sys

    service = make_service()
    env = {**service.env, "PRODBUG_SERVICE": "billing"}
    service.env = env
    (door,) = service.start(1)
    # A plain process of the same user, never set up for debugging.
    plain = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"],
                             env=base_env)
    try:
        done = run_cli("inject", str(plain.pid), "--service", "billing", env=base_env,
                       timeout=90)
        assert done.returncode == 0, done.stderr
        assert [(a["pid"], a["role"]) for a in service.ps(keys.observer)["agents"]] == [
            (door.pid, "door"), (plain.pid, "member")]
        stacks = service.cli("stacks", service.address, "--pid", str(plain.pid), "--json",
                             "--cpu-interval", "0", key=keys.observer)
        assert stacks.returncode == 0, stacks.stderr
        (process,) = json.loads(stacks.stdout)["processes"]
        assert process["pid"] == plain.pid
        assert any(t["name"] == "MainThread" for t in process["threads"])
    finally:
        plain.kill()
        plain.wait(10)


def test_door_killed_during_all(three: Service, keys: Keys) -> None:
    import subprocess
    import sys

    door, first, second = three.processes
    stop_process(door.pid)  # it holds the request, then dies with it
    cli = subprocess.Popen([sys.executable, "-m", "prodbug", "stacks", three.address, "--all",
                            "--json", "--cpu-interval", "0", "--timeout", "5"],
                           env=three.client_env(keys.observer), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        os.kill(door.pid, signal.SIGKILL)
        _out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    # Either the request reached the member that took over, or a clear "no reply": never a
    # hang or a traceback.
    assert cli.returncode in (0, 3), err
    assert "Traceback" not in err
    if cli.returncode == 3:
        assert "no reply" in err or "did not" in err, err
    after = three.cli("stacks", three.address, "--all", "--json", "--cpu-interval", "0",
                      key=keys.observer)
    assert after.returncode == 0, after.stderr
    assert sorted(p["pid"] for p in json.loads(after.stdout)["processes"]) == sorted(
        [first.pid, second.pid])
    # The killed door is a zombie until the test reaps it: it has exited, so it is not
    # listed, and --all does not wait out its timeout for it.
    assert json.loads(after.stdout)["missing"] == []
    assert door.pid not in [a["pid"] for a in three.ps(keys.observer)["agents"]]


def test_all_without_a_target_asks_every_local_agent(spawn: Callable[..., Target],
                                                     base_env: dict[str, str]) -> None:
    a, b = spawn("member", env=base_env), spawn("member", env=base_env)
    stop_process(b.pid)  # one that cannot answer is named, not awaited
    try:
        done = run_cli("stacks", "--all", "--json", "--cpu-interval", "0", "--timeout", "3",
                       env=base_env)
    finally:
        os.kill(b.pid, signal.SIGCONT)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert [p["pid"] for p in merged["processes"]] == [a.pid]
    assert merged["missing"] == [{"pid": b.pid, "reason": "no reply within 3s"}]
