"""`prodbug vscode`: a DAP client acting as VS Code, through the real CLI and agent."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from conftest import TARGETS, Request, Target, count, run_cli, still_counting, wait_for
from dapclient import DapClient

SERVICE = str(TARGETS / "service.py")
LINES = (TARGETS / "service.py").read_text().splitlines()
WORK_LINE = next(n for n, t in enumerate(LINES, 1) if t.strip() == "i += 1")
HANDLER_LINE = next(n for n, t in enumerate(LINES, 1) if "# BREAK" in t)
MAINLOOP = str(TARGETS / "mainloop.py")
MAIN_LINE = next(n for n, t in enumerate(Path(MAINLOOP).read_text().splitlines(), 1)
                 if "# MAIN-LINE" in t)


def _stopped_in(dap: DapClient, function: str) -> tuple[int, dict[str, object]]:
    stopped = dap.event("stopped")["body"]
    thread = stopped["threadId"]
    frames = dap.request("stackTrace", threadId=thread, startFrame=0, levels=20)["stackFrames"]
    assert frames[0]["name"] == function, frames[0]
    return thread, frames[0]


def test_vscode_attach_break_inspect_continue_reattach(service: Target, vscode, base_env,
                                                       tmp_path: Path) -> None:
    launch = tmp_path / ".vscode" / "launch.json"
    launch.parent.mkdir()
    launch.write_text('{\n  // mine\n  "version": "0.2.0",\n  "configurations": [\n'
                      '    {"name": "keep me", "type": "debugpy", "request": "launch"},\n  ]\n}\n')
    cli = vscode("--pid", str(service.pid), "--port", "0", "--yes", "--remote-root", "/srv/app",
                 "--write-launch-json", str(launch))
    port = cli.port()
    config = json.loads("".join(cli.out))
    assert config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    assert config["pathMappings"] == [{"localRoot": "${workspaceFolder}", "remoteRoot": "/srv/app"}]
    merged = json.loads(launch.read_text())
    assert [c["name"] for c in merged["configurations"]] == ["keep me", config["name"]]
    assert "// mine" in (tmp_path / ".vscode" / "launch.json.bak").read_text()

    dap = DapClient(port)
    dap.attach({SERVICE: [WORK_LINE, HANDLER_LINE]})
    thread, frame = _stopped_in(dap, "work")  # the worker was already running
    assert frame["line"] == WORK_LINE
    names = [t["name"] for t in dap.request("threads")["threads"]]
    assert "worker" in names
    scopes = dap.request("scopes", frameId=frame["id"])["scopes"]
    local = next(s for s in scopes if s["name"].lower().startswith("locals"))
    variables = {v["name"]: v for v in
                 dap.request("variables", variablesReference=local["variablesReference"])[
                     "variables"]}
    i = int(variables["i"]["value"])
    assert i > 0
    assert dap.request("evaluate", expression="i * 2", frameId=frame["id"],
                       context="repl")["result"] == str(i * 2)

    dap.set_breakpoints(SERVICE, [HANDLER_LINE])  # let the worker run; keep the handler's
    dap.request("continue", threadId=thread)
    assert still_counting(service)
    request = Request(service.facts["http"] + "/vscode")
    request.start()
    thread, frame = _stopped_in(dap, "do_GET")
    assert dap.request("evaluate", expression="path", frameId=frame["id"],
                       context="repl")["result"] == "'/vscode'"
    dap.request("continue", threadId=thread)
    request.join(60)
    assert request.result == (200, "hello /vscode")
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()

    again = DapClient(port)  # VS Code attaches again through the same prodbug vscode
    again.attach({SERVICE: [WORK_LINE]})
    thread, frame = _stopped_in(again, "work")
    assert frame["line"] == WORK_LINE
    again.request("continue", threadId=thread)
    again.request("disconnect", restart=False, terminateDebuggee=False)
    again.close()

    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["agent"]["debugpy"] == "ready" and info["agent"]["debugpy_since"] > 0
    assert info["debug"]["debugpy_loaded"] is True
    (entry,) = json.loads(run_cli("ps", "--json", env=base_env).stdout)["agents"]
    assert entry["debugpy"] == "ready" and entry["debugpy_since"] > 0
    assert " ready " in run_cli("ps", env=base_env).stdout  # the DEBUGPY column


@pytest.mark.heartbeat(2)  # the operator vanishes: the heartbeat ends it
def test_killing_the_cli_resumes_a_thread_stopped_at_a_breakpoint(service: Target,
                                                                  vscode) -> None:
    cli = vscode("--pid", str(service.pid), "--port", "0", "--yes")
    dap = DapClient(cli.port())
    dap.attach({SERVICE: [WORK_LINE]})
    _stopped_in(dap, "work")
    stopped_at = count(service)
    assert not wait_for(lambda: count(service) > stopped_at + 5, timeout=1.0)  # it is stopped
    cli.proc.send_signal(signal.SIGKILL)
    assert still_counting(service)  # the agent closed VS Code's side: debugpy resumed
    dap.close()
    # A later prodbug vscode reuses the adapter already listening.
    second = vscode("--pid", str(service.pid), "--port", "0")
    again = DapClient(second.port())
    again.attach({})
    assert "worker" in [t["name"] for t in again.request("threads")["threads"]]
    again.request("disconnect", restart=False, terminateDebuggee=False)
    again.close()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ has no lasting cost")
def test_slow_python_needs_confirmation(service: Target, base_env) -> None:
    result = run_cli("vscode", "--pid", str(service.pid), "--port", "0", env=base_env,
                     timeout=60)
    assert result.returncode == 2
    assert "several times slower" in result.stderr and "--yes" in result.stderr
    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["agent"]["debugpy"] == "off"


def _debugpy(target: Target, env: dict[str, str]) -> dict[str, object]:
    info = json.loads(run_cli("info", "--pid", str(target.pid), "--json", env=env).stdout)
    facts = {k: v for k, v in info["agent"].items() if k.startswith("debugpy")}
    return {**facts, "monitoring_tools": info["debug"]["monitoring_tools"]}


def test_last_detach_takes_the_tracing_down_and_the_next_attach_sets_it_up(
        spawn, vscode, base_env, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    target = spawn("mainloop", env={**base_env, "COUNTER_FILE": str(counter)})
    traced = Path(f"{counter}.traced")  # the main thread's own sys.gettrace(), every 10 ms

    def main_thread_says(value: str) -> bool:
        # Twice, 50 ms apart: a value the running loop keeps writing, not a stale one.
        return wait_for(lambda: traced.exists() and traced.read_text() == value and
                        not wait_for(lambda: traced.read_text() != value, timeout=0.05))

    assert main_thread_says("0")
    cli = vscode("--pid", str(target.pid), "--port", "0", "--yes")
    port = cli.port()
    for attach in range(2):  # the second attach finds pydevd taken down, and sets it up
        dap = DapClient(port)
        dap.attach({MAINLOOP: [MAIN_LINE]})
        thread, frame = _stopped_in(dap, "loop")  # the main thread, looping since it started
        assert frame["line"] == MAIN_LINE
        dap.set_breakpoints(MAINLOOP, [])
        dap.request("continue", threadId=thread)
        if sys.version_info < (3, 12):
            assert main_thread_says("1")  # pydevd's trace function, seen from that thread
        dap.request("disconnect", restart=False, terminateDebuggee=False)
        dap.close()
        assert wait_for(lambda: _debugpy(target, base_env)["debugpy_tracing"] == "off")
        facts = _debugpy(target, base_env)
        assert facts["debugpy"] == "ready" and facts["debugpy_left"] == []
        assert "pydevd" not in facts["monitoring_tools"].values()  # type: ignore[union-attr]
        assert main_thread_says("0")  # no trace function left in the running thread
        if attach == 1:
            assert facts["debugpy_restart_ms"] is not None
