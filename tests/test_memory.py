"""``prodbug memory`` against a target with a known leak (docs/memory.md).

The leak's allocation site comes out on top of ``--trace``; the leaked type is among the
top types by count; objects whose class would run code if looked at the usual way are
counted without running it; tracemalloc is stopped after a trace, after Ctrl-C, and when
the operator is killed mid-trace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest
from conftest import TARGETS, Keys, Target, run_cli, wait_for

SOURCE = TARGETS / "memory_leak.py"
LINES = SOURCE.read_text().splitlines()
LEAK_LINE = next(n for n, text in enumerate(LINES, 1) if text.endswith("# LEAK"))
CALL_LINE = next(n for n, text in enumerate(LINES, 1) if text.endswith("# CALL"))


@pytest.fixture
def observer_env(base_env: dict[str, str], keys: Keys) -> dict[str, str]:
    """An observer key over CURVE TCP: the role these commands need."""
    return {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


def status(target: Target) -> dict[str, Any]:
    """What the target says of itself (tracemalloc, trap counter, leaked objects)."""
    before = sum(1 for line in target.output if line.startswith("STATUS "))
    assert target.proc.stdin is not None
    target.proc.stdin.write("status\n")
    target.proc.stdin.flush()
    assert wait_for(lambda: sum(1 for ln in target.output if ln.startswith("STATUS ")) > before)
    line = [ln for ln in target.output if ln.startswith("STATUS ")][before]
    return dict(json.loads(line[len("STATUS "):]))


def types_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {row["type"]: row["count"] for row in rows}


def test_memory_finds_the_leak_and_runs_no_host_code(spawn: Any, agent_env: dict[str, str],
                                                     observer_env: dict[str, str]) -> None:
    target = spawn("memory_leak", env={**agent_env, "PRODBUG_SESSION_HEARTBEAT": "10"})
    leaked = status(target)["leaked"]  # 3000 before it was ready, and more each ms

    # The one-shot report: every container looked at (a small host), the leaked type
    # among the top types by count, the traps counted by type without running them.
    done = run_cli("memory", target.host_port, "--json", "--top", "200", env=observer_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    objects = report["objects"]
    assert (objects["mode"], objects["complete"]) == ("full", True)
    by_count = types_of(objects["by_count"])
    assert by_count["bytearray"] >= leaked
    assert "bytearray" in [row["type"] for row in objects["by_count"][:20]]
    assert (by_count["__main__.Trap"], by_count["__main__.TrapList"]) == (100, 100)
    assert report["trend"]["note"] == "first reading"
    assert report["tracemalloc"] == {"tracing": False}
    deep = run_cli("memory", target.host_port, "--json", "--deep", env=observer_env)
    assert deep.returncode == 0, deep.stderr
    deep_report = json.loads(deep.stdout)
    assert deep_report["objects"]["mode"] == "deep"
    assert deep_report["trend"]["readings"] == 2
    assert deep_report["trend"]["bytes_per_min"] > 0  # it leaks
    assert status(target)["ran"] == 0

    # --trace: the leak's line on top (its caller below it), in the human report;
    # tracemalloc stopped after.
    traced = run_cli("memory", target.host_port, "--trace", "2", "--top", "5", "--frames",
                     "2", env=observer_env)
    assert traced.returncode == 0, traced.stderr
    sites = traced.stdout.split("allocation sites that grew over 2s")[1].splitlines()[2:]
    assert sites[0].endswith(f"{SOURCE}:{LEAK_LINE}"), traced.stdout
    assert sites[1].split() == [f"{SOURCE}:{CALL_LINE}"], traced.stdout
    assert "bytearray" in traced.stdout.split("top types by size")[0]
    after = status(target)
    assert (after["tracing"], after["ran"]) == (False, 0)


@pytest.mark.timeout(120)
def test_memory_trace_stops_tracemalloc_when_the_operator_goes(
        spawn: Any, agent_env: dict[str, str], observer_env: dict[str, str]) -> None:
    target = spawn("memory_leak", env={**agent_env, "PRODBUG_SESSION_HEARTBEAT": "5"})

    def trace() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "prodbug", "memory", target.host_port,
                                 "--trace", "100", "--json"], env=observer_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    for how in (signal.SIGINT, signal.SIGKILL):  # Ctrl-C, then an operator killed
        cli = trace()
        try:
            assert wait_for(lambda: status(target)["tracing"], 60), cli.stderr
            if how == signal.SIGINT:  # meanwhile: listed by info, and one trace at a time
                info = run_cli("info", target.host_port, "--json", env=observer_env)
                assert info.returncode == 0, info.stderr
                assert [s["mode"] for s in json.loads(info.stdout)["agent"]["sessions"]] \
                    == ["memory"]
                second = run_cli("memory", target.host_port, "--trace", "1",
                                 env=observer_env)
                assert second.returncode == 1
                assert "busy: a memory trace" in second.stderr
            cli.send_signal(how)
            code = cli.wait(30)
            assert code == (130 if how == signal.SIGINT else -signal.SIGKILL), cli.stderr
            assert wait_for(lambda: not status(target)["tracing"], 30)
        finally:
            if cli.poll() is None:
                cli.kill()
            cli.communicate(timeout=30)
    # The agent is alive and answering (and tracemalloc still off after its reply).
    done = run_cli("memory", target.host_port, "--json", env=observer_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tracemalloc"] == {"tracing": False}
    assert status(target)["tracing"] is False
