"""Stacks that answer "why is it stuck?", against real stuck processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TARGETS, Keys, Target, run_cli, wait_for

from prodbug.client import Client

THREADS_INNERMOST = ["sleeper", "lock_waiter", "selector"]


def _dump(env: dict[str, str], target: Target, *extra: str) -> dict[str, Any]:
    result = run_cli("stacks", "--pid", str(target.pid), "--json", *extra, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    return proc  # type: ignore[no-any-return]


def _by_name(proc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in proc["threads"]}


#: What each waiting thread of tests/targets/stuck.py waits on (docs/stacks.md's kinds).
WAIT_KINDS = {
    "holder": "sleep", "consumer": "queue", "flag-waiter": "event", "sem-waiter": "semaphore",
    "barrier-waiter": "barrier", "cond-waiter": "condition", "future-waiter": "future",
    "acceptor": "socket", "receiver": "io", "selecting": "select", "child-waiter": "subprocess",
    "in-c": "unknown", "payer": "lock", "alpha": "rlock", "joiner": "join",
}


def test_deadlock_lock_owners_and_wait_kinds(spawn, base_env) -> None:
    target = spawn("stuck", env=base_env)
    with Client(f"ipc://{base_env['PRODBUG_RUNTIME_DIR']}/{target.pid}.sock") as client:
        assert wait_for(lambda: len(client.request("stacks", {"cpu_interval": 0})["deadlocks"])
                        == 2)

    human = run_cli("stacks", "--pid", str(target.pid), env=base_env)
    assert human.returncode == 0, human.stderr
    deadlocks = sorted(line for line in human.stdout.splitlines() if line.startswith("DEADLOCK"))
    assert len(deadlocks) == 2
    for word in ("'alpha'", "'beta'", "LOCK_A", "LOCK_B"):
        assert word in deadlocks[0]
    assert deadlocks[1].startswith(
        "DEADLOCK: 'joiner' waits for thread 'gatekeeper' to finish; 'gatekeeper' waits for "
        "Lock GATE at 0x")
    assert deadlocks[1].endswith(" held by 'joiner'")
    joiner = next(line for line in human.stdout.splitlines() if "'joiner' (" in line)
    assert "to finish" in joiner and "held by" not in joiner, joiner  # a join has no owner

    proc = _dump(base_env, target)
    cycles = {tuple(sorted(c["names"])): c for c in proc["deadlocks"]}
    assert set(cycles) == {("alpha", "beta"), ("gatekeeper", "joiner")}
    assert all(c["description"].startswith("deadlock: ") for c in cycles.values())
    threads = _by_name(proc)
    assert {name: threads[name]["wait"]["kind"] for name in WAIT_KINDS} == WAIT_KINDS
    assert "LOCK_B" in threads["alpha"]["wait"]["what"]
    assert threads["alpha"]["wait"]["owner_name"] == "beta"
    assert [h["what"].split()[1] for h in threads["alpha"]["holds"]] == ["LOCK_A"]
    # A plain Lock: its owner is known because the holder is inside ``with LEDGER:``.
    assert threads["payer"]["wait"]["owner_name"] == "holder"
    assert "LEDGER" in threads["holder"]["holds"][0]["what"]
    # A join cycle: the joiner holds GATE (inside ``with GATE:``) and joins the thread
    # that waits for GATE.
    assert threads["joiner"]["wait"]["owner_name"] == "gatekeeper"
    assert [h["what"].split()[1] for h in threads["joiner"]["holds"]] == ["GATE"]
    assert threads["gatekeeper"]["wait"]["owner_name"] == "joiner"
    assert threads["alpha"]["since_s"] is not None  # seen waiting by an earlier dump
    assert all(t["state"] == "waiting" for n, t in threads.items() if n != "prodbug-agent")


def test_locals_are_bounded_redacted_and_run_no_host_code(spawn, base_env, agent_env,
                                                         keys: Keys) -> None:
    target = spawn("stuck", env=agent_env)
    # SlowRepr.__repr__ sleeps 60 s: the 30 s limit on the CLI would trip if it ran.
    proc = _dump(base_env, target, "--locals")
    frame = _by_name(proc)["secrets"]["frames"][0]
    assert frame["function"] == "keep_secrets"
    shown = frame["locals"]
    assert shown["password"] == "<redacted>"
    assert shown["api_token"] == "<redacted>"
    assert shown["slow"] == "SlowRepr(size=3)"
    assert shown["user"] == "{'name': 'ada', 'session_id': <redacted>}"
    # Bounded (docs/stacks.md): 10 items per container, 200 characters, depth 3.
    assert shown["history"] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...] <1000 items>"
    assert shown["note"] == "'" + "n" * 196 + "..."
    assert shown["nested"] == "[[[<list>]]]"
    assert proc["locals_redacted"] is True

    unredacted = _dump(base_env, target, "--locals", "--no-redact")  # local: debugger
    assert _by_name(unredacted)["secrets"]["frames"][0]["locals"]["password"] == "'hunter2'"

    observer = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
                "PRODBUG_SERVER_KEY": str(keys.server_public)}
    denied = run_cli("stacks", target.host_port, "--locals", "--no-redact", env=observer)
    assert denied.returncode == 4
    assert "debugger role" in denied.stderr


def test_asyncio_tasks_listed_and_grouped(spawn, base_env) -> None:
    target = spawn("tasks", env=base_env)
    proc = _dump(base_env, target)
    (loop,) = proc["loops"]
    assert loop["thread_name"] == "loop-thread"
    tasks = {t["name"]: t for t in proc["tasks"]}
    expected = ({f"stuck-{i}" for i in range(120)} | {f"napper-{i}" for i in range(50)}
                | {f"reader-{i}" for i in range(30)})
    assert expected <= set(tasks)
    assert all(tasks[n]["state"] == "pending" and tasks[n]["frames"] for n in expected)
    stuck = tasks["stuck-7"]
    assert [f["function"] for f in stuck["frames"]][-1] == "wait_for_event"
    assert stuck["frames"][0]["function"].endswith("wait")  # asyncio.Event.wait, innermost
    assert "Event" in stuck["awaiting"]

    groups = [g for g in proc["task_groups"] if set(g["names"]) & expected]
    assert sorted((g["count"], sorted({n.split("-")[0] for n in g["names"]})) for g in groups) \
        == [(30, ["reader"]), (50, ["napper"]), (120, ["stuck"])]
    human = run_cli("stacks", "--pid", str(target.pid), env=base_env).stdout
    assert "120 tasks: 'stuck-0', 'stuck-1'" in human
    assert "awaiting asyncio.Event" in human
    everything = run_cli("stacks", "--pid", str(target.pid), "--no-group", env=base_env).stdout
    assert "120 tasks" not in everything and "'stuck-119'" in everything


def _line_of(path: Path, function: str, text: str) -> int:
    """The number of the line holding ``text`` in ``function`` of ``path``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {function}("))
    return next(i for i in range(start, len(lines)) if text in lines[i]) + 1


def test_gil_held_by_c_call_fallback_and_hang_dump(spawn, base_env) -> None:
    # The regex holds the GIL for at least 6 s (calibrated on the quickest of three
    # samples): longer than the CLI's 2 s timeout plus its start, and than the 2 s hang timer.
    target = spawn("regex", env={**base_env, "PRODBUG_HANG_DUMP": "2", "REGEX_SECONDS": "6"})
    lineno = _line_of(TARGETS / "regex.py", "catastrophic", 'PATTERN.match("a" * n + "b")')
    assert target.proc.stdin is not None
    target.proc.stdin.write("go\n")
    target.proc.stdin.flush()
    assert wait_for(lambda: any("REGEX STARTED" in line for line in target.output))

    result = run_cli("stacks", "--pid", str(target.pid), "--timeout", "2", env=base_env)
    assert result.returncode == 0, result.stderr
    assert "did not answer within 2s" in result.stderr and "faulthandler" in result.stderr
    assert "C-level dump" in result.stdout
    assert re.search(rf"\n +catastrophic \(\S*regex\.py:{lineno}\)\n", result.stdout), \
        result.stdout

    assert wait_for(lambda: any("REGEX DONE" in line for line in target.output), timeout=90)
    proc = _dump(base_env, target)
    hang = proc["hang_dump"]
    assert hang is not None, "no hang dump: the regex ended before the 2 s hang timer fired"
    assert f'regex.py", line {lineno} in catastrophic' in hang["text"]
    assert hang["seconds"] == 2
    human = run_cli("stacks", "--pid", str(target.pid), env=base_env).stdout
    assert "Latest hang dump" in human
    assert re.search(rf"\n +catastrophic \(\S*regex\.py:{lineno}\)\n", human), human


def _py_spy() -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which("py-spy", path=here) or shutil.which("py-spy")
    if found is None:
        pytest.fail("py-spy is not installed: scripts/test installs it with the test extra")
    return found


@pytest.mark.parametrize(("name", "args"), [("threads", ("--threads", "12")), ("stuck", ()),
                                            ("tasks", ())])
def test_same_threads_and_innermost_functions_as_py_spy(spawn, base_env, name: str,
                                                        args: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        pytest.skip("py-spy needs ptrace rights (root here)")
    target = spawn(name, *args, env=base_env)
    ours = _dump(base_env, target, "--cpu-interval", "0")
    spy = subprocess.run([_py_spy(), "dump", "--pid", str(target.pid), "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    theirs = {t["os_thread_id"]: t for t in json.loads(spy.stdout)}
    mine = {t["native_id"]: t for t in ours["threads"]}
    assert set(mine) == set(theirs)
    for native, thread in mine.items():
        if thread.get("agent"):
            continue  # it was busy answering us; py-spy saw it idle in poll
        innermost = theirs[native]["frames"][0]["name"]
        assert thread["frames"][0]["function"] == innermost, thread["name"]


def test_cpu_use_needs_no_wait_and_says_its_window(spawn, base_env) -> None:
    target = spawn("threads", "--threads", "3", "--spin", env=base_env)
    with Client(f"ipc://{base_env['PRODBUG_RUNTIME_DIR']}/{target.pid}.sock") as client:
        # No earlier dump to measure from: a short sample.
        first = client.request("stacks")
        assert first["cpu_window"]["kind"] == "sample"
        assert first["cpu_window"]["seconds"] > 0
        assert _by_name(first)["spinner"]["state"] == "running"
        # Right after it: over the time since that dump's first reading, no sample.
        second = client.request("stacks")
        assert second["cpu_window"]["kind"] == "since_last"
        assert second["cpu_window"]["seconds"] > 0
        spinner = _by_name(second)["spinner"]
        assert spinner["state"] == "running"
        assert spinner["cpu_percent"] >= 10
        assert _by_name(second)["worker-0"]["state"] == "waiting"
        # An explicit cpu_interval keeps its meaning: 0 measures nothing.
        none = client.request("stacks", {"cpu_interval": 0})
        assert none["cpu_window"] == {"kind": "none", "seconds": None}
        assert all(t["cpu_percent"] is None for t in none["threads"])

    human = run_cli("stacks", "--pid", str(target.pid), env=base_env)
    assert human.returncode == 0, human.stderr
    assert "; CPU % over the last " in human.stdout.splitlines()[1]
    assert "'spinner' (running, " in human.stdout
