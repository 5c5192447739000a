"""The C-level dump fallback is safe: its own signal, only to a process that catches it,
never instead of the application's handlers, its files private and cleaned up, and a
forked child's own (docs/stacks.md, "When the agent cannot answer")."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Target, run_cli, stop_target, wait_for

RTMIN = signal.SIGRTMIN


def _entry(runtime_dir: Path, pid: int) -> dict[str, Any]:
    return json.loads((runtime_dir / f"{pid}.json").read_text())  # type: ignore[no-any-return]


def _said(target: Target, text: str) -> bool:
    return wait_for(lambda: any(text in line for line in target.output), 30)


def _functions(proc: dict[str, Any]) -> set[str]:
    return {f["function"] for t in proc["threads"] for f in t["frames"]}


def _fallback(env: dict[str, str], pid: int) -> tuple[dict[str, Any], str]:
    result = run_cli("stacks", "--pid", str(pid), "--timeout", "0.5", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    return proc, result.stderr


def test_a_free_signal_no_fallback_the_apps_handlers_kept_files_private_and_removed(
        spawn, base_env: dict[str, str], runtime_dir: Path, tmp_path: Path) -> None:
    app_dump = tmp_path / "app.dump"
    target = spawn("fb_frozen", env={**base_env, "APP_DUMP": str(app_dump),
                                     "PRODBUG_HANG_DUMP": "2"})
    # The host took SIGRTMIN+13 (Python handler) and +12 (its own faulthandler.register)
    # before the agent started: the agent takes the next free ones, +11 and +10.
    ours = RTMIN + 11
    assert _entry(runtime_dir, target.pid)["dump_signal"] == ours
    info = run_cli("info", "--pid", str(target.pid), "--json", env=base_env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["agent"]["dump_signal"] == ours
    dump = runtime_dir / f"{target.pid}.dump"
    assert dump.stat().st_size == 0

    assert target.proc.stdin is not None
    target.proc.stdin.write("freeze\n")
    target.proc.stdin.flush()
    assert _said(target, "FROZEN")  # printed from C, with the GIL already held

    refused = run_cli("stacks", "--pid", str(target.pid), "--timeout", "0.5", "--no-fallback",
                      env=base_env)
    assert refused.returncode == 3
    assert "no reply from" in refused.stderr and "frozen in a C call" in refused.stderr
    assert "faulthandler" not in refused.stderr and refused.stdout == ""
    assert dump.stat().st_size == 0  # no signal was sent

    proc, said = _fallback(base_env, target.pid)
    assert "did not answer within 0.5s" in said and f"on signal {ours} instead" in said
    assert (proc["fallback"], proc["dump_signal"]) == ("faulthandler", ours)
    assert "hold_the_gil" in _functions(proc)
    written = dump.stat().st_size
    assert written > 0
    # Still frozen: the hang timer (on the agent's second signal) fires after 2 s.
    pending = runtime_dir / f"{target.pid}.hang-pending"
    assert wait_for(lambda: pending.stat().st_size > 0, 30)
    assert app_dump.stat().st_size == 0 and not any("APP HANDLER" in ln for ln in target.output)

    target.proc.stdin.write("thaw\n")
    target.proc.stdin.flush()
    answered = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert answered.returncode == 0 and "did not answer" not in answered.stderr
    (alive,) = json.loads(answered.stdout)["processes"]
    assert "fallback" not in alive and "hold_the_gil" in alive["hang_dump"]["text"]
    # The application's own handlers are still the ones that run.
    os.kill(target.pid, RTMIN + 13)
    assert _said(target, f"APP HANDLER {RTMIN + 13}")
    os.kill(target.pid, RTMIN + 12)
    assert wait_for(lambda: app_dump.stat().st_size > 0)
    assert dump.stat().st_size == written

    files = sorted(p.name for p in runtime_dir.iterdir() if p.suffix in (".dump", ".hang"))
    assert files == [f"{target.pid}.dump", f"{target.pid}.hang"]
    for name in (*files, pending.name):
        assert stat.S_IMODE((runtime_dir / name).stat().st_mode) == 0o600, name
    assert stop_target(target) == 0
    assert list(runtime_dir.iterdir()) == []  # the agent stopped: every file of it gone


def test_a_stale_entry_whose_pid_does_not_catch_the_signal_gets_none(
        base_env: dict[str, str], runtime_dir: Path) -> None:
    import socket

    # A process that reused the pid of an agent killed without clean-up: it does not catch
    # the dump signal, whose default action would kill it. Its old socket still accepts
    # (nobody answers), so the CLI times out as with a frozen agent.
    victim = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfor line in sys.stdin: print(line, end='')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=base_env)
    listener = socket.socket(socket.AF_UNIX)
    try:
        pid = victim.pid
        listener.bind(str(runtime_dir / f"{pid}.sock"))
        listener.listen()
        (runtime_dir / f"{pid}.dump").touch(mode=0o600)
        fd = os.open(runtime_dir / f"{pid}.json", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": pid, "endpoint": f"ipc://{runtime_dir}/{pid}.sock",
                       "dump_signal": RTMIN + 11, "dump_file": f"{runtime_dir}/{pid}.dump",
                       "argv": ["old-agent"]}, f)
        result = run_cli("stacks", "--pid", str(pid), "--timeout", "0.5", env=base_env)
        assert result.returncode == 3, result.stderr
        assert f"does not catch signal {RTMIN + 11}: not sending it" in result.stderr
        assert victim.stdin is not None and victim.stdout is not None
        victim.stdin.write("still here\n")  # a pending fatal signal would end it first
        victim.stdin.flush()
        assert victim.stdout.readline() == "still here\n"
    finally:
        listener.close()
        victim.kill()
        victim.communicate(timeout=10)
    gone = run_cli("stacks", "--pid", str(pid), "--timeout", "0.5", env=base_env)
    assert gone.returncode == 3 and f"no process {pid} on this host" in gone.stderr


def test_a_forked_child_dumps_its_own_threads_on_the_chosen_signal(
        spawn, base_env: dict[str, str], runtime_dir: Path) -> None:
    chosen = RTMIN + 2  # outside the automatic range (SIGRTMIN+13 downwards)
    target = spawn("fb_forking", env={**base_env, "PRODBUG_DUMP_SIGNAL": str(chosen)})
    child = int(target.facts["child"])
    assert _entry(runtime_dir, target.pid)["dump_signal"] == chosen
    # The child unregistered its parent's handler and registered its own on the same
    # signal, writing into its own file.
    entry = _entry(runtime_dir, child)
    assert (entry["dump_signal"], entry["dump_file"]) == (chosen, f"{runtime_dir}/{child}.dump")
    assert _said(target, "CHILD FROZEN")

    proc, said = _fallback(base_env, child)
    assert f"on signal {chosen} instead" in said
    assert proc["pid"] == child
    functions = _functions(proc)
    assert {"child_worker", "hold_the_gil"} <= functions and "parent_only" not in functions
    assert (runtime_dir / f"{child}.dump").stat().st_size > 0
    assert (runtime_dir / f"{target.pid}.dump").stat().st_size == 0

    parent = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert parent.returncode == 0 and "did not answer" not in parent.stderr
    (alive,) = json.loads(parent.stdout)["processes"]
    assert "parent-only" in {t["name"] for t in alive["threads"]}
    assert stop_target(target) == 0  # the child thaws and stops its agent
    assert list(runtime_dir.iterdir()) == []
