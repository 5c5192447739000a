"""The README's main use, and VS Code's own settings (docs/vscode.md, docs/pdb.md).

`prodbug pdb` and `prodbug vscode` over CURVE TCP with a debugger key, the way an operator
reaches a service (not through the local registry, as the other session tests do), with
the reconnects that promises: a new session after a clean end and after the CLI was killed
mid-session, a new attach through the same `prodbug vscode`, a new `prodbug vscode`. And
what the printed launch.json says is what VS Code gets: `justMyCode`, the path mapping of
`--local-root`/`--remote-root`, `--write-launch-json` creating or updating the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pexpect
import pytest
from conftest import TARGETS, Keys, Request, Target, VscodeCli, still_counting, wait_for
from dapclient import DapClient

PROMPT = r"\(Pdb\) "
LINES = (TARGETS / "service.py").read_text().splitlines()
BREAK_LINE = next(n for n, text in enumerate(LINES, 1) if "# BREAK" in text)
WORK_LINE = next(n for n, text in enumerate(LINES, 1) if text.strip() == "i += 1")
SEND_LINE = next(n for n, text in enumerate(LINES, 1) if "self.send_response(200)" in text)
LOG_LINE = next(n for n, text in enumerate(LINES, 1)
                if "def log_message" in text) + 1  # its body: `pass`


def _tcp_service(spawn: Any, agent_env: dict[str, str], tmp_path: Path,
                 heartbeat: str) -> Target:
    target = spawn("service", env={**agent_env, "COUNTER_FILE": str(tmp_path / "counter"),
                                   "PRODBUG_SESSION_HEARTBEAT": heartbeat})
    target.facts["counter"] = str(tmp_path / "counter")
    return target


@pytest.fixture
def debugger_env(base_env: dict[str, str], keys: Keys) -> dict[str, str]:
    """The operator's side: a debugger key, the agent's public key, nothing local."""
    return {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.debugger),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


def test_pdb_over_tcp_with_a_debugger_key_and_its_reconnects(spawn, agent_env, debugger_env,
                                                             cli, tmp_path: Path) -> None:
    # A short heartbeat (5 s, not 2: pings on a loaded machine come late): the session of
    # the killed CLI must end within the test.
    target = _tcp_service(spawn, agent_env, tmp_path, heartbeat="5")
    env = debugger_env

    child = cli("pdb", target.host_port, "--thread", "worker", env=env)
    child.expect("stopped thread 'worker'")
    child.expect(PROMPT)
    child.sendline("p i")
    child.expect(r"\r\n(\d+)\r\n")
    assert int(child.match.group(1)) > 0
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    assert child.wait() == 0
    assert still_counting(target)

    # A second session over TCP; its CLI is killed while the thread is stopped.
    killed = cli("pdb", target.host_port, "--break", f"service.py:{BREAK_LINE}", env=env)
    killed.expect("waiting for a thread to reach it")
    stopped = Request(target.facts["http"] + "/killed")
    stopped.start()
    killed.expect(PROMPT)
    killed.sendline("p path")
    killed.expect("'/killed'")
    killed.expect(PROMPT)
    killed.kill(signal.SIGKILL)
    stopped.join(60)  # the agent hears no heartbeat: the session ends, the thread goes on
    assert stopped.result == (200, "hello /killed")

    # The transport reconnects: a new CLI over TCP gets a session of its own.
    again = cli("pdb", target.host_port, "--break", f"service.py:{BREAK_LINE}", env=env)
    again.expect("waiting for a thread to reach it")
    request = Request(target.facts["http"] + "/again")
    request.start()
    again.expect(PROMPT)
    again.sendline("p path")
    again.expect("'/again'")
    again.expect(PROMPT)
    again.sendline("c")
    again.expect("session ended")
    again.expect(pexpect.EOF)
    assert again.wait() == 0
    request.join(60)
    assert request.result == (200, "hello /again")
    assert still_counting(target)


def _printed(cli: VscodeCli) -> dict[str, Any]:
    """The attach configuration ``prodbug vscode`` printed (stdout, pumped by a thread)."""
    def parsed() -> bool:
        try:
            json.loads("".join(cli.out))
        except ValueError:
            return False
        return True
    assert wait_for(parsed, timeout=30), "".join(cli.out)
    config: dict[str, Any] = json.loads("".join(cli.out))
    return config


def _stopped(dap: DapClient) -> tuple[int, dict[str, Any]]:
    thread = int(dap.event("stopped")["body"]["threadId"])
    return thread, dap.top_frame(thread)


def test_vscode_over_tcp_does_what_the_printed_launch_json_says(
        spawn, agent_env, debugger_env, vscode, tmp_path: Path) -> None:
    target = _tcp_service(spawn, agent_env, tmp_path, heartbeat="10")
    env = debugger_env
    name = f"prodbug: {target.host_port}"
    # The operator's checkout (--local-root) holds the code the service runs from TARGETS.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    local = checkout / "service.py"
    shutil.copy(TARGETS / "service.py", local)
    launch = tmp_path / ".vscode" / "launch.json"
    launch.parent.mkdir()
    launch.write_text(
        '{\n  // mine\n  "version": "0.2.0",\n  "configurations": [\n'
        '    {"name": "keep me", "type": "debugpy", "request": "launch"},\n'
        f'    {{"name": "{name}", "type": "debugpy", "request": "attach", "connect": '
        '{"host": "127.0.0.1", "port": 1}},\n  ]\n}\n')

    cli = vscode(target.host_port, "--port", "0", "--yes", "--local-root", str(checkout),
                 "--remote-root", str(TARGETS), "--write-launch-json", str(launch), env=env)
    port = cli.port()
    config = _printed(cli)
    assert config["justMyCode"] is True  # the default
    assert config["pathMappings"] == [{"localRoot": str(checkout), "remoteRoot": str(TARGETS)}]
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    # An existing launch.json: the entry of the same name replaced, the others kept, and its
    # comments (lost to JSON) kept in launch.json.bak.
    merged = json.loads(launch.read_text())
    assert merged["configurations"] == [
        {"name": "keep me", "type": "debugpy", "request": "launch"}, config]
    assert "// mine" in (launch.parent / "launch.json.bak").read_text()
    assert any(f"updated {name!r}" in line for line in cli.err), cli.err

    dap = DapClient(port)
    dap.attach_as(config, {str(local): [BREAK_LINE]})  # VS Code speaks of its local path
    request = Request(target.facts["http"] + "/tcp")
    request.start()
    thread, frame = _stopped(dap)
    assert (frame["name"], frame["line"]) == ("do_GET", BREAK_LINE)
    assert frame["source"]["path"] == str(local)
    dap.request("next", threadId=thread)
    thread, frame = _stopped(dap)
    assert frame["line"] == SEND_LINE
    # justMyCode: stepping into send_response (http.server, the stdlib) does not stop in
    # it; the first line of the operator's code it calls (the handler's log_message) does.
    dap.request("stepIn", threadId=thread)
    thread, frame = _stopped(dap)
    assert (frame["source"]["path"], frame["name"], frame["line"]) == (
        str(local), "log_message", LOG_LINE), frame
    dap.request("continue", threadId=thread)
    request.join(60)
    assert request.result == (200, "hello /tcp")
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()

    again = DapClient(port)  # VS Code attaches again through the same prodbug vscode
    again.attach_as(config, {str(local): [WORK_LINE]})
    thread, frame = _stopped(again)
    assert (frame["source"]["path"], frame["name"], frame["line"]) == (
        str(local), "work", WORK_LINE)
    again.set_breakpoints(str(local), [])
    again.request("continue", threadId=thread)
    again.request("disconnect", restart=False, terminateDebuggee=False)
    again.close()
    assert still_counting(target)

    cli.proc.send_signal(signal.SIGINT)  # Ctrl-C: the session closes
    assert cli.proc.wait(30) == 0
    # A new prodbug vscode over TCP, writing a launch.json that did not exist.
    fresh = tmp_path / "elsewhere" / ".vscode" / "launch.json"
    second = vscode(target.host_port, "--port", "0", "--no-just-my-code",
                    "--write-launch-json", str(fresh), env=env)
    second.port()
    config = _printed(second)
    assert config["justMyCode"] is False
    # The defaults: the operator's workspace, and the service's working directory (ours).
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}",
                                       "remoteRoot": os.getcwd()}]
    assert json.loads(fresh.read_text()) == {"version": "0.2.0", "configurations": [config]}
    assert not (fresh.parent / "launch.json.bak").exists()
    assert any(f"added {name!r}" in line for line in second.err), second.err
    second.proc.send_signal(signal.SIGINT)
    assert second.proc.wait(30) == 0

    # A launch.json it cannot merge into is left as it was, and the session goes on: the
    # printed block is the operator's to paste.
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    third = vscode(target.host_port, "--port", "0", "--write-launch-json", str(broken), env=env)
    port = third.port()
    assert any("is not valid JSON" in line and "add the block above by hand" in line
               for line in third.err), third.err
    assert broken.read_text() == "{ not json"
    last = DapClient(port)
    last.attach_as(_printed(third), {})
    assert "worker" in [t["name"] for t in last.request("threads")["threads"]]
    last.request("disconnect", restart=False, terminateDebuggee=False)
    last.close()
