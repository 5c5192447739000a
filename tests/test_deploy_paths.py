"""Ways into a service that other tests do not take: ``import prodbug.autostart`` through
the kit's ``sitecustomize`` on a non-loopback address, and a fork while an operator is
debugging the parent (README "In Python", docs/run.md, agent/README.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pexpect
import psutil
from conftest import TARGETS, Keys, Target, free_port, run_cli, wait_for
from dapclient import DapClient

from prodbug.client import Client

KIT = Path(__file__).resolve().parent.parent / "agent"
FORKING = str(TARGETS / "deploy_forking.py")
CHILD_LINE = next(n for n, t in enumerate(Path(FORKING).read_text().splitlines(), 1)
                  if "# CHILD-LINE" in t)
PROMPT = r"\(Pdb\) "


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def _remote_address() -> str:
    """An address of this host that is not loopback (127.0.0.1 when it has none)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return "127.0.0.1"


def _threads(env: dict[str, str], *target: str) -> dict[str, dict[str, Any]]:
    result = run_cli("stacks", *target, "--json", env=env)
    assert result.returncode == 0, result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    return {t["name"]: t for t in proc["threads"]}


def test_autostart_from_the_kits_sitecustomize_on_all_interfaces_only_with_allow_remote(
        spawn, base_env: dict[str, str], keys: Keys) -> None:
    tcp = {**base_env, "PRODBUG_SERVER_SECRET_KEY": str(keys.server_secret),
           "PRODBUG_AUTHORIZED_KEYS": str(keys.authorized)}
    port, other_port = free_port(), free_port()
    remote = spawn("deploy_host", env={**tcp, "PYTHONPATH": str(KIT / "sitecustomize"),
                                       "PRODBUG_LISTEN": f"tcp://0.0.0.0:{port}",
                                       "PRODBUG_ALLOW_REMOTE": "1"})
    # Started at interpreter start by the bootstrap, from PRODBUG_LISTEN alone.
    assert (remote.facts["before"], remote.facts["after"]) == (True, True)
    assert remote.facts["tcp"] == f"tcp://0.0.0.0:{port}"
    assert ("0.0.0.0", port) in _listening(remote.pid)
    observer = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
                "PRODBUG_SERVER_KEY": str(keys.server_public)}
    over_tcp = _threads(observer, f"{_remote_address()}:{port}")
    assert over_tcp["deploy-worker"]["frames"][0]["function"] == "deploy_loop"
    assert "deploy-worker" in _threads(base_env, "--pid", str(remote.pid))  # and over ipc

    refused = spawn("deploy_host", env={**tcp, "PRODBUG_LISTEN": f"tcp://0.0.0.0:{other_port}"})
    assert (refused.facts["before"], refused.facts["after"]) == (False, False)
    said = "".join(refused.output)
    assert "prodbug.agent prodbug agent not started" in said and "PRODBUG_ALLOW_REMOTE=1" in said
    assert _listening(refused.pid) == set()
    missing = run_cli("stacks", "--pid", str(refused.pid), env=base_env)
    assert missing.returncode == 3 and "runs no prodbug agent" in missing.stderr


def _fork(target: Target) -> dict[str, Any]:
    """Have the target fork a child; what the child inherited, once its agent runs."""
    assert target.proc.stdin is not None
    done = sum(line.startswith("FORKED ") for line in target.output)
    target.proc.stdin.write("fork\n")
    target.proc.stdin.flush()
    forked = lambda: [ln for ln in target.output if ln.startswith("FORKED ")]  # noqa: E731
    assert wait_for(lambda: len(forked()) > done, 30), "".join(target.output)
    facts: dict[str, Any] = json.loads(forked()[done][len("FORKED "):])
    assert facts["agent"]
    return facts


def _sessions(env: dict[str, str], pid: int) -> int:
    agents = json.loads(run_cli("ps", "--json", env=env).stdout)["agents"]
    return int(next(a for a in agents if a["pid"] == pid)["sessions"])


def test_a_fork_while_pdb_inspects_or_waits_in_the_parent(spawn, base_env: dict[str, str], cli,
                                             runtime_dir: Path) -> None:
    env = {**base_env, "PRODBUG_SESSION_HEARTBEAT": "10"}
    target = spawn("deploy_forking", env=env)
    pdb = cli("pdb", "--pid", str(target.pid), "--inspect", "parent-worker", env=env)
    pdb.expect(PROMPT)
    assert _sessions(env, target.pid) == 1

    child = _fork(target)["pid"]
    threads = _threads(env, "--pid", str(child))
    assert "child_loop" in {f["function"] for f in threads["child-worker"]["frames"]}
    assert "parent-worker" not in threads
    assert _sessions(env, child) == 0  # nothing inherited: a session of its own opens
    with Client(f"ipc://{runtime_dir}/{child}.sock") as client:
        opened = client.request("pdb.open", {"mode": "inspect", "thread": "child-worker"})
        client.request("session.close", {"session": opened["session"]})

    pdb.sendline("where")  # the parent's session goes on
    pdb.expect("parent_loop")
    pdb.expect(PROMPT)
    pdb.sendline("q")
    pdb.expect(pexpect.EOF)
    assert wait_for(lambda: _sessions(env, target.pid) == 0)

    # Armed at a line only a child runs: the child must not stop there, with nobody to
    # release it; the parent's session keeps waiting, and a Ctrl-C ends it.
    armed = cli("pdb", "--pid", str(target.pid), "--break", f"{FORKING}:{CHILD_LINE}", env=env)
    armed.expect("waiting for a thread to reach it")
    second = _fork(target)["pid"]

    def looping() -> bool:
        worker = _threads(env, "--pid", str(second))["child-worker"]
        return bool(worker["frames"][0]["function"] == "child_loop")
    assert wait_for(looping)
    assert _sessions(env, second) == 0 and _sessions(env, target.pid) == 1
    armed.sendintr()
    armed.expect(pexpect.EOF)
    assert wait_for(lambda: _sessions(env, target.pid) == 0)


def test_a_fork_while_vscode_is_attached_to_the_parent(spawn, base_env: dict[str, str],
                                                       vscode) -> None:
    env = {**base_env, "PRODBUG_SESSION_HEARTBEAT": "10"}
    target = spawn("deploy_forking", env=env)
    attached = vscode("--pid", str(target.pid), "--port", "0", "--yes", env=env)
    dap = DapClient(attached.port())
    children: list[int] = []
    try:
        dap.attach({FORKING: [CHILD_LINE]})  # a line only a child runs

        child = _fork(target)
        children.append(child["pid"])
        assert (child["settrace"], child["threading_settrace"], child["monitoring_tool"]) \
            == (None, None, None)

        def looping() -> bool:  # not stopped at the parent's breakpoint with nobody there
            worker = _threads(env, "--pid", str(child["pid"]))["child-worker"]
            return bool(worker["frames"][0]["function"] == "child_loop")
        assert wait_for(looping)

        names = [t["name"] for t in dap.request("threads")["threads"]]  # the parent's goes on
        assert "parent-worker" in names
        dap.request("disconnect", restart=False, terminateDebuggee=False)
    finally:
        dap.close()
        for pid in children:  # a child stopped by pydevd would never exit by itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
