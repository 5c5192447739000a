"""pdb's manners in a live service (docs/pdb.md): the commands it refuses, what it never takes
over (the host's tracers, the host's stdout), a --condition that raises, and Ctrl-C while
waiting for the line. One tests/targets/pdb_host.py per test, sessions with a 10 s
heartbeat (a starved CLI on a busy machine must not end them)."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pexpect
import pytest
from conftest import TARGETS, Request, Target, run_cli, wait_for
from test_pdb import PROMPT

SOURCE = (TARGETS / "pdb_host.py").read_text().splitlines()
BREAK_LINE = next(n for n, text in enumerate(SOURCE, 1) if "# PDB-BREAK" in text)
STEP_LINE = next(n for n, text in enumerate(SOURCE, 1) if "# STEP-LINE" in text)


@pytest.fixture
def host(spawn: Callable[..., Target], base_env: dict[str, str]) -> Target:
    return spawn("pdb_host", env={**base_env, "PRODBUG_SESSION_HEARTBEAT": "10"})


def _get(target: Target, path: str) -> str:
    with urllib.request.urlopen(target.facts["http"] + path, timeout=60) as response:
        assert response.status == 200
        return str(response.read().decode())


def _tracer(target: Target) -> dict[str, Any]:
    """The traced thread's line count and whether its tracer is still the host's; the trace
    functions of a new request's thread and of threading.settrace."""
    return dict(json.loads(_get(target, "/tracer")))


def _host_tracer_counts(target: Target) -> bool:
    start = _tracer(target)["lines"]
    return wait_for(lambda: _tracer(target)["lines"] > start + 3, timeout=30)


def _pdb(cli: Callable[..., pexpect.spawn], target: Target, *args: str) -> pexpect.spawn:
    return cli("pdb", "--pid", str(target.pid), *args)


def test_refused_commands_keep_the_session_and_stdout_stays_the_hosts(host: Target,
                                                                      cli) -> None:
    child = _pdb(cli, host, "--break", f"pdb_host.py:{BREAK_LINE}")
    child.expect("waiting for a thread to reach it")
    request = Request(host.facts["http"] + "/stopped")
    request.start()
    child.expect("stopped thread")
    child.expect(PROMPT)
    for command, reason in (
            ("interact", "'interact' would read the service's own stdin"),
            ("debug 1 + 1", "a nested debugger is not available over prodbug"),
            ("run", "restarting the program is not possible in a live service"),
            ("restart", "restarting the program is not possible in a live service")):
        child.sendline(command)
        child.expect(r"\*\*\* " + re.escape(reason))
        child.expect(PROMPT)
    child.sendline("p path")  # the session goes on after each refusal
    child.expect("'/stopped'")
    child.expect(PROMPT)
    child.sendline("n")
    child.expect(r"print\(f\"handled \{path\}\"")
    child.expect(PROMPT)
    child.sendline("n")  # steps over the stopped thread's own print(...)
    child.expect(PROMPT)
    assert wait_for(lambda: "handled /stopped\n" in host.output)  # the host's stdout
    assert _get(host, "/meanwhile") == "hello /meanwhile"  # another thread prints, too
    assert wait_for(lambda: "handled /meanwhile\n" in host.output)
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    terminal = child.logfile_read.getvalue()
    assert "handled /stopped" not in terminal  # nothing printed reached the operator
    assert "handled /meanwhile" not in terminal
    request.join(60)
    assert request.result == (200, "hello /stopped")


def test_a_raising_condition_is_reported_then_ctrl_c_disarms(host: Target, cli,
                                                             base_env) -> None:
    # True for /go, KeyError for any other path.
    child = _pdb(cli, host, "--break", f"pdb_host.py:{BREAK_LINE}",
                 "--condition", "{'/go': True}[path]")
    child.expect("waiting for a thread to reach it")
    assert _get(host, "/other") == "hello /other"  # raised: reported, not stopped
    child.expect(r"--condition raised KeyError: '/other'")
    child.sendintr()  # while still waiting for a thread to reach the line
    child.expect("Ctrl-C: the thread goes on; detached")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    # Disarmed: no hook is left (looked at first: a hit would remove it), and the request
    # the condition would stop passes.
    info = json.loads(run_cli("info", "--pid", str(host.pid), "--json", env=base_env).stdout)
    assert info["debug"]["monitoring_tools"] == {}
    assert _tracer(host)["thread"] is None  # a new thread: no trace function given to it
    assert _get(host, "/go") == "hello /go"


def test_the_hosts_own_tracers_are_never_taken_over(host: Target, cli, base_env) -> None:
    assert _host_tracer_counts(host)
    # --thread on a thread the host traces: refused, saying why.
    refused = run_cli("pdb", "--pid", str(host.pid), "--thread", "traced", env=base_env)
    assert refused.returncode == 1
    assert "traced by another tool" in refused.stderr
    # --break on a line that thread runs: it passes there unstopped; an untraced thread stops.
    child = _pdb(cli, host, "--break", f"pdb_host.py:{STEP_LINE}")
    child.expect("waiting for a thread to reach it")
    assert _host_tracer_counts(host)  # the traced thread ran the armed line, and counted it
    request = Request(host.facts["http"] + "/step")
    request.start()
    child.expect(r"stopped thread '([^']*)'")
    assert child.match.group(1) != "traced"
    child.expect(PROMPT)
    child.sendline("c")
    child.expect(pexpect.EOF)
    request.join(60)
    assert request.result == (200, "hello /step")
    state = _tracer(host)
    assert state["own"] is True
    assert _host_tracer_counts(host)
    # A host tracer installed with threading.settrace.
    _get(host, "/global-on")
    child = _pdb(cli, host, "--break", f"pdb_host.py:{BREAK_LINE}")
    if sys.version_info < (3, 12):  # it would have to be replaced: refused
        child.expect("another tracer is installed with threading.settrace")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1
    else:  # sys.monitoring: left alone, and the threads it traces are never stopped
        child.expect("waiting for a thread to reach it")
        assert _get(host, "/passes") == "hello /passes"
        child.sendintr()
        child.expect(pexpect.EOF)
    state = _tracer(host)
    assert (state["threading"], state["thread"]) == ("host_global", "host_global")
    assert state["own"] is True
