"""`prodbug pdb` driven the way an operator drives it: the real CLI under a pty."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from conftest import TARGETS, Request, Target, run_cli, still_counting, wait_for

PROMPT = r"\(Pdb\) "
BREAK_LINE = next(n for n, text in enumerate(
    (TARGETS / "service.py").read_text().splitlines(), 1) if "# BREAK" in text)


def _break(cli: Callable[..., pexpect.spawn], target: Target, path: str) -> tuple[
        pexpect.spawn, Request]:
    child = cli("pdb", "--pid", str(target.pid), "--break", f"service.py:{BREAK_LINE}")
    child.expect("waiting for a thread to reach it")
    request = Request(target.facts["http"] + path)
    request.start()
    child.expect(PROMPT)
    return child, request


def test_thread_print_step_continue(service: Target, cli, base_env) -> None:
    child = cli("pdb", "--pid", str(service.pid), "--thread", "worker")
    child.expect("stopped thread 'worker'")
    child.expect(PROMPT)
    child.sendline("p i")
    child.expect(r"\r\n(\d+)\r\n")
    assert int(child.match.group(1)) > 0
    child.sendline("n")
    child.expect(r"service\.py\(\d+\)work\(\)")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    assert child.wait() == 0
    assert still_counting(service)
    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["debug"]["monitoring_tools"] == {}  # the hook is gone


def test_break_in_http_handler_shows_the_request(service: Target, cli, base_env) -> None:
    child, request = _break(cli, service, "/hello-pdb")
    child.sendline("p path")
    child.expect("'/hello-pdb'")
    child.expect(PROMPT)
    child.sendline('p path == "hunter2-typed"')  # a secret typed into pdb
    child.expect("False")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect(pexpect.EOF)
    request.join(60)
    assert request.result == (200, "hello /hello-pdb")
    assert still_counting(service)
    # The break is gone with the session: no monitoring tool, and no stop on the line.
    info = json.loads(run_cli("info", "--pid", str(service.pid), "--json", env=base_env).stdout)
    assert info["debug"]["monitoring_tools"] == {}
    after = Request(service.facts["http"] + "/after")
    after.start()
    after.join(60)
    assert after.result == (200, "hello /after")
    records = json.loads(run_cli("audit", "--pid", str(service.pid), "--json",
                                 env=base_env).stdout)["records"]
    typed = [r["line"] for r in records if r.get("cmd") == "session.input"]
    # Recorded, with string literals masked: the audit log keeps no typed secrets.
    assert typed == ["p path", "p path == '***'", "c"]
    assert [r["outcome"] for r in records if r["event"] == "session"] == [
        "detached: the thread goes on"]


@pytest.mark.parametrize("how", [
    pytest.param("sigkill", marks=pytest.mark.heartbeat(2)),  # ended by the heartbeat
    "sigterm", "q", "ctrl-d", "ctrl-c"])
def test_operator_leaving_lets_the_request_finish(service: Target, cli, how: str) -> None:
    child, request = _break(cli, service, f"/{how}")
    assert request.is_alive()  # stopped in the debugger
    if how == "sigkill":
        child.kill(signal.SIGKILL)
    elif how == "sigterm":
        child.kill(signal.SIGTERM)
    elif how == "q":
        child.sendline("q")
    elif how == "ctrl-d":
        child.sendeof()
    else:
        child.sendintr()
    request.join(60)
    assert request.result == (200, f"hello /{how}")
    child.expect(pexpect.EOF)
    # With no session at all, a request through the line is not stopped (a leftover hook
    # would be invisible inside a new session, which arms the line again).
    free = Request(service.facts["http"] + "/free")
    free.start()
    free.join(60)
    assert free.result == (200, "hello /free")
    # The process is free for the next operator.
    again, second = _break(cli, service, "/again")
    again.sendline("c")
    second.join(60)
    assert second.result == (200, "hello /again")


def test_idle_session_ends_and_the_cli_leaves_the_prompt(spawn, base_env, cli,
                                                          tmp_path: Path) -> None:
    target = spawn("service", env={**base_env, "PRODBUG_SESSION_IDLE": "1",
                                   "COUNTER_FILE": str(tmp_path / "counter")})
    child, request = _break(cli, target, "/idle")
    child.expect("idle for 1s: the thread goes on")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    request.join(60)
    assert request.result == (200, "hello /idle")


def test_one_session_at_a_time(service: Target, cli, base_env) -> None:
    first = cli("pdb", "--pid", str(service.pid), "--inspect", "worker")
    first.expect(PROMPT)
    busy = run_cli("pdb", "--pid", str(service.pid), "--inspect", "worker", env=base_env)
    assert busy.returncode == 1
    assert "busy: inspect session opened by local:uid" in busy.stderr
    first.sendline("q")
    first.expect(pexpect.EOF)


def test_inspect_looks_without_stopping(service: Target, cli) -> None:
    child = cli("pdb", "--pid", str(service.pid), "--inspect", "worker")
    child.expect("values are live")
    child.expect(PROMPT)
    assert still_counting(service)  # the thread runs while we look
    child.sendline("p i")
    child.expect(r"\r\n(\d+)\r\n")
    child.sendline("n")
    child.expect("no stepping")
    child.sendline("where")
    child.expect("work()")
    child.sendline("q")
    child.expect(pexpect.EOF)


def test_post_mortem_of_a_dead_thread(service: Target, cli, base_env) -> None:
    nothing = run_cli("pdb", "--pid", str(service.pid), "--post-mortem", env=base_env)
    assert nothing.returncode == 1
    assert "no unhandled exception" in nothing.stderr
    crash = Request(service.facts["http"] + "/crash")
    crash.start()
    crash.join(60)
    assert wait_for(lambda: any("ValueError: boom 42" in line for line in service.output))
    child = cli("pdb", "--pid", str(service.pid), "--post-mortem")
    child.expect("post-mortem of ValueError: boom 42")
    child.expect(PROMPT)
    child.sendline("p amount")
    child.expect(r"\r\n42\r\n")
    child.sendline("where")
    child.expect("crash")
    child.sendline("q")
    child.expect(pexpect.EOF)
    assert still_counting(service)
