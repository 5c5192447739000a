"""``prodbug inject PID`` against real processes with the real gdb: the agent arrives in a
process that never imported prodbug, and every refusal leaves the target as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import OtherUser, run_cli, wait_for

import prodbug

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="prodbug inject works on Linux (/proc, ptrace)")
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None,
                               reason="gdb is not installed (apt-get install gdb)")

# Imports neither prodbug nor threading; waits in select() between ticks; ends on stdin EOF.
LOOP = """
import select, sys, time
def work_loop():
    n = 0
    while True:
        n += 1
        print("tick", n, flush=True)
        if select.select([sys.stdin], [], [], 0.05)[0] and not sys.stdin.readline():
            return n
print("bye", work_loop(), flush=True)
"""


@dataclass
class Loop:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    follower: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ticks(self) -> int:
        return sum(1 for line in self.lines if line.startswith("tick "))

    def still_ticking(self) -> bool:
        start = self.ticks()
        return wait_for(lambda: self.ticks() >= start + 3, timeout=20)

    def finish(self) -> int:
        """Close stdin (the loop returns) and reap it; its exit code."""
        with contextlib.suppress(BrokenPipeError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        return self.proc.wait(20)


def _follow(loop: Loop) -> None:
    assert loop.proc.stdout is not None
    for line in loop.proc.stdout:
        loop.lines.append(line)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    """Start ``PYTHON [FLAGS] -c LOOP`` (cwd: an empty directory) and wait for its first tick."""
    started: list[Loop] = []

    def start(env: dict[str, str], *flags: str, python: str = sys.executable,
              popen: Callable[..., subprocess.Popen[str]] | None = None) -> Loop:
        if popen is not None:
            proc = popen(LOOP)
        else:
            proc = subprocess.Popen([python, *flags, "-c", LOOP], cwd=tmp_path, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        target = Loop(proc)
        started.append(target)
        target.follower = threading.Thread(target=_follow, args=(target,), daemon=True)
        target.follower.start()
        assert wait_for(lambda: target.ticks() > 0, timeout=20), target.lines
        return target

    yield start
    for target in started:
        if target.proc.poll() is None:
            target.proc.kill()
        target.proc.wait(10)
        if target.follower is not None:
            target.follower.join(10)
        for stream in (target.proc.stdin, target.proc.stdout, target.proc.stderr):
            if stream is not None:
                stream.close()


def _alive_and_running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] in ("R", "S", "D")


@needs_gdb
def test_inject_then_stacks_and_the_target_runs_on(loop: Callable[..., Loop],
                                                  base_env: dict[str, str]) -> None:
    target = loop(base_env)
    result = run_cli("inject", str(target.pid), "--json", env=base_env)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert (facts["pid"], facts["already_running"], facts["method"]) == (target.pid, False, "gdb")
    stacks = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert stacks.returncode == 0, stacks.stderr
    (proc,) = json.loads(stacks.stdout)["processes"]
    main = next(t for t in proc["threads"] if t["name"] == "MainThread")
    assert "work_loop" in [frame["function"] for frame in main["frames"]]
    assert target.still_ticking()
    assert target.finish() == 0
    # Nothing but its own output: the agent never writes to the host's stdout or stderr.
    assert [ln.split()[0] for ln in target.lines] == ["tick"] * target.ticks() + ["bye"]


@needs_gdb
def test_inject_twice_says_already_running(loop: Callable[..., Loop],
                                           base_env: dict[str, str]) -> None:
    target = loop(base_env)
    first = run_cli("inject", str(target.pid), env=base_env)
    assert first.returncode == 0, first.stderr
    second = run_cli("inject", str(target.pid), "--json", env=base_env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["already_running"] is True
    human = run_cli("inject", str(target.pid), env=base_env)
    assert (human.returncode, "already runs a prodbug agent" in human.stdout) == (0, True)
    assert target.still_ticking()
    assert target.finish() == 0


def test_not_a_python_process(base_env: dict[str, str]) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = run_cli("inject", str(sleeper.pid), env=base_env)
        assert result.returncode == 2, result.stderr
        assert "is not a Python process" in result.stderr
        assert _alive_and_running(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_zombie(base_env: dict[str, str]) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.kill()  # and not reaped: a zombie until wait()
        assert wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text()
                        .rpartition(")")[2].split()[0] == "Z")
        result = run_cli("inject", str(child.pid), env=base_env)
        assert result.returncode == 3, result.stderr
        assert "zombie" in result.stderr
    finally:
        child.wait(10)


def test_gdb_missing(loop: Callable[..., Loop], base_env: dict[str, str],
                     tmp_path: Path) -> None:
    target = loop(base_env)
    result = run_cli("inject", str(target.pid), env={**base_env, "PATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "gdb is not installed" in result.stderr and "apt-get install gdb" in result.stderr
    assert target.still_ticking()
    assert target.finish() == 0


@needs_gdb
def test_ptrace_refused(loop: Callable[..., Loop], base_env: dict[str, str],
                        as_other: Callable[..., subprocess.Popen[str]],
                        other_user: OtherUser) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_PTRACE")
    target = loop(base_env, popen=as_other)
    result = subprocess.run(
        [setpriv, "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace",
         sys.executable, "-m", "prodbug", "inject", str(target.pid)],
        capture_output=True, text=True, env=base_env, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert f"not allowed to trace process {target.pid} (uid {other_user.uid})" in result.stderr
    assert "SYS_PTRACE" in result.stderr
    assert _alive_and_running(target.pid)
    assert target.still_ticking()


@needs_gdb
def test_prodbug_not_importable(loop: Callable[..., Loop], base_env: dict[str, str]) -> None:
    target = loop(base_env, "-S")  # no site-packages: no prodbug, no zmq
    result = run_cli("inject", str(target.pid), env=base_env)
    assert result.returncode == 2, result.stderr
    assert f"process {target.pid} cannot import prodbug" in result.stderr
    assert "pip install" in result.stderr and "--path DIR" in result.stderr
    assert target.still_ticking()
    assert target.finish() == 0
    assert [ln.split()[0] for ln in target.lines] == ["tick"] * target.ticks() + ["bye"]


@needs_gdb
def test_path_brings_prodbug(loop: Callable[..., Loop], base_env: dict[str, str]) -> None:
    import zmq

    target = loop(base_env, "-S")
    paths = [os.path.dirname(os.path.dirname(prodbug.__file__)),
             os.path.dirname(os.path.dirname(zmq.__file__))]
    result = run_cli("inject", str(target.pid), *(f"--path={p}" for p in paths), env=base_env)
    assert result.returncode == 0, result.stderr
    assert f"process {target.pid} (Python {sys.version_info[0]}.{sys.version_info[1]}) now " \
           f"runs the prodbug agent" in result.stdout
    stacks = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert stacks.returncode == 0, stacks.stderr
    assert target.still_ticking()
    assert target.finish() == 0


BUSY = """
import sys
print("tick 1", flush=True)
n = 0
while True:  # pure Python, no system call: never a safe place to call into
    n += 1
"""


@needs_gdb
def test_busy_main_thread_is_left_alone(base_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], cwd=tmp_path, env=base_env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "tick 1\n"
        result = run_cli("inject", str(proc.pid), "--timeout", "2", env=base_env)
        assert result.returncode == 3, result.stderr
        assert "never waited in a system call" in result.stderr
        assert "nothing was run in it" in result.stderr
        assert _alive_and_running(proc.pid)
        assert not Path(base_env["PRODBUG_RUNTIME_DIR"], f"{proc.pid}.json").exists()
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@needs_gdb
def test_timeout_before_the_call_kills_gdb_and_the_target_runs_on(
        loop: Callable[..., Loop], base_env: dict[str, str], tmp_path: Path) -> None:
    # A gdb that attaches, then hangs (as a slow symbol read would) before the calls.
    slow = tmp_path / "slow-gdb"
    slow.write_text("#!/bin/sh\n"
                    "for last; do :; done\n"
                    "sed -i 's/^echo PRODBUG-ATTACHED.*/&\\nshell sleep 60/' \"$last\"\n"
                    f"exec {shutil.which('gdb')} \"$@\"\n")
    slow.chmod(0o755)
    target = loop(base_env)
    result = run_cli("inject", str(target.pid), "--timeout", "3", "--gdb", str(slow),
                     env=base_env)
    assert result.returncode == 3, result.stderr
    assert "gdb did not get into process" in result.stderr
    assert _alive_and_running(target.pid)
    assert target.still_ticking()
    assert target.finish() == 0
    assert [ln.split()[0] for ln in target.lines] == ["tick"] * target.ticks() + ["bye"]
