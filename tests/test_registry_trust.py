"""Whose registry entries the CLI believes, and what it prints of what a service says.

A second local user (``prodbug-other``, stdlib-only Python) plants runtime directories,
forged ``PID.json`` files and a fake agent that speaks just enough ZMTP to answer with
escape sequences; root's CLI must neither connect to it nor stop its own agents from
starting. A service whose names carry escape sequences must be shown, never obeyed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest
from conftest import OtherUser, Target, run_cli, short_tmp

from prodbug import registry
from prodbug.errors import ConfigError, TargetUnreachable

#: What the targets/escapes.py service puts in its names (and the fake agent in its reply).
NASTY = "\x1b[2J\x1b]0;pwned\x07\u202e\x9b31m"
NASTY_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07\\u202e\\x9b31m"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")

# Run as the other user: make its directory (mode "own": TMP/prodbug-ITSUID; "taken":
# TMP/prodbug-VICTIMUID, before the victim's agent starts; "symlink": that name as a link
# to a directory of its own), print READY, read the victim's pid, plant PID.json and
# PID.sock there, print PLANTED, then answer every request on that socket with a forged
# stack dump and audit trail ("info" gets an error reply; ZMTP 3.0, NULL mechanism, as a
# ROUTER) and print CONNECTED for each client.
FAKE_AGENT = r'''
import json, os, select, socket, struct, sys

shared, mode, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
forged = sys.argv[4]
if mode == "own":
    where = os.path.join(shared, f"prodbug-{os.getuid()}")
    os.mkdir(where, 0o700)
elif mode == "taken":
    where = os.path.join(shared, f"prodbug-{victim}")
    os.mkdir(where, 0o700)
else:
    real = os.path.join(shared, "mine")
    os.mkdir(real, 0o700)
    where = os.path.join(shared, f"prodbug-{victim}")
    os.symlink(real, where)
print("READY", flush=True)
pid = int(sys.stdin.readline())
path = os.path.join(where, f"{pid}.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(8)
with open(os.path.join(where, f"{pid}.json"), "w") as f:
    json.dump({"pid": pid, "argv": [forged], "endpoint": f"ipc://{path}",
               "tcp_endpoint": None, "started_at": 0, "version": forged}, f)
print("PLANTED", flush=True)

def exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def frame(conn):
    flags = exact(conn, 1)[0]
    size = struct.unpack(">Q", exact(conn, 8))[0] if flags & 2 else exact(conn, 1)[0]
    return flags, exact(conn, size)

def send(conn, body, flags=0):
    head = bytes([flags | 2]) + struct.pack(">Q", len(body)) if len(body) > 255 \
        else bytes([flags, len(body)])
    conn.sendall(head + body)

def serve(conn):
    conn.settimeout(10)
    conn.sendall(b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    exact(conn, 64)
    send(conn, b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER", 4)
    frame(conn)  # the client's READY
    while True:
        flags, body = frame(conn)
        if flags & 5:  # a command, or not the last frame of a message
            continue
        request = json.loads(body)
        if request["cmd"] == "info":
            send(conn, json.dumps({"prodbug": 1, "id": request["id"], "ok": False, "error": {
                "code": "internal_error", "message": forged}}).encode())
            continue
        frames = [{"filename": forged, "lineno": 1, "function": forged, "line": forged}]
        result = {"pid": pid, "argv": [forged], "python": forged, "implementation": forged,
                  "threads": [{"name": forged, "ident": 1, "native_id": 1, "daemon": False,
                               "state": "running", "frames": frames}],
                  "records": [{"time": "t", "event": forged, "cmd": "x\n2026-01-01 forged"}]}
        send(conn, json.dumps({"prodbug": 1, "id": request["id"], "ok": True,
                               "result": result}).encode())

while True:
    ready, _, _ = select.select([listener, sys.stdin], [], [])
    if sys.stdin in ready and not sys.stdin.readline():
        break
    if listener in ready:
        conn, _ = listener.accept()
        print("CONNECTED", flush=True)
        try:
            serve(conn)
        except (EOFError, OSError, ValueError):
            pass
        conn.close()
'''


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh world-writable sticky temp dir (like /tmp) that the CLI and targets use."""
    with short_tmp("pbs-", 0o1777) as path:
        yield path


def _default_env(base_env: dict[str, str], shared: Path) -> dict[str, str]:
    """No PRODBUG_RUNTIME_DIR: targets and CLI use the default TMP/prodbug-UID, in
    ``shared``, as they do in a real /tmp."""
    env = {k: v for k, v in base_env.items()
           if k not in ("PRODBUG_RUNTIME_DIR", "XDG_RUNTIME_DIR")}
    return {**env, "TMPDIR": str(shared), "NO_COLOR": "1"}


@dataclass
class Attacker:
    """The other user, and the shared temp dir where it acts."""

    shared: Path
    uid: int
    as_other: Callable[..., subprocess.Popen[str]]

    def start(self, mode: str) -> subprocess.Popen[str]:
        """Run FAKE_AGENT in ``mode``; returns once its directory is in place."""
        proc = self.as_other(FAKE_AGENT, str(self.shared), mode, str(os.getuid()), NASTY)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "READY\n", (line, proc.stderr.read() if proc.stderr else "")
        return proc


@pytest.fixture
def attacker(shared_tmp: Path, as_other: Callable[..., subprocess.Popen[str]],
             other_user: OtherUser) -> Attacker:
    return Attacker(shared_tmp, other_user.uid, as_other)


def _plant(proc: subprocess.Popen[str], pid: int) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{pid}\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line == "PLANTED\n", (line, proc.stderr.read() if proc.stderr else "")


def _connections(proc: subprocess.Popen[str]) -> list[str]:
    """End the fake agent; what it printed after PLANTED (a CONNECTED per client)."""
    out, err = proc.communicate("", timeout=10)
    assert proc.returncode == 0, err
    return out.splitlines()


def _no_raw(*texts: str) -> None:
    for text in texts:
        assert not [c for c in RAW if c in text], text


def test_forged_entry_of_another_user_is_not_believed(
        spawn: Callable[..., Target], base_env: dict[str, str], attacker: Attacker) -> None:
    shared_tmp, other = attacker.shared, attacker.uid
    env = _default_env(base_env, shared_tmp)
    target = spawn("threads", "--no-agent", env=env)  # root's, with no agent to find
    fake = attacker.start("own")
    _plant(fake, target.pid)

    result = run_cli("stacks", "--pid", str(target.pid), env=env)

    assert (result.returncode, result.stdout) == (3, "")
    assert (f"ignoring {shared_tmp}/prodbug-{other}: owned by uid {other}, "
            f"but process {target.pid} runs as uid 0") in result.stderr
    assert "no trusted registry entry" in result.stderr
    _no_raw(result.stderr)
    assert _connections(fake) == []  # never even connected


@pytest.mark.parametrize("mode", ["taken", "symlink"])
def test_default_dir_taken_by_another_user(
        spawn: Callable[..., Target], base_env: dict[str, str], attacker: Attacker,
        mode: str) -> None:
    shared_tmp = attacker.shared
    env = _default_env(base_env, shared_tmp)
    fake = attacker.start(mode)  # TMP/prodbug-0 is theirs before we start

    target = spawn("threads", env=env)  # its agent starts all the same, elsewhere

    (private,) = shared_tmp.glob("prodbug-0-*")
    assert (private.stat().st_uid, private.stat().st_mode & 0o777) == (0, 0o700)
    assert target.facts["ipc"] == f"ipc://{private}/{target.pid}.sock"
    _plant(fake, target.pid)  # and a forged entry for it where the CLI looks first

    stacks = run_cli("stacks", "--pid", str(target.pid), env=env)
    ps = run_cli("ps", env=env)
    ps_json = run_cli("ps", "--json", env=env)

    assert stacks.returncode == 0, stacks.stderr
    assert "'worker-0'" in stacks.stdout
    why = (f"owned by uid {attacker.uid}, but process {target.pid} runs as uid 0"
           if mode == "taken" else "it is a symlink")
    assert f"prodbug: ignoring {shared_tmp}/prodbug-0: {why}\n" == stacks.stderr
    assert ps.returncode == 0, ps.stderr
    assert [line.split()[0] for line in ps.stdout.splitlines()[1:]] == [str(target.pid)]
    assert [(a["pid"], a["endpoint"]) for a in json.loads(ps_json.stdout)["agents"]] == [
        (target.pid, target.facts["ipc"])]
    _no_raw(stacks.stdout, stacks.stderr, ps.stdout)
    assert "FORGED" not in stacks.stdout + ps.stdout
    assert _connections(fake) == []


def test_fallback_is_one_private_dir_said_once_and_explicit_dirs_are_still_refused(
        attacker: Attacker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    shared_tmp = attacker.shared
    fake = attacker.start("taken")
    monkeypatch.delenv("PRODBUG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    taken = shared_tmp / f"prodbug-{os.getuid()}"

    with caplog.at_level(logging.WARNING, logger="prodbug.agent"):
        first = registry.resolve_runtime_dir(None)
        again = registry.resolve_runtime_dir(None)

    assert first == again and first.parent == shared_tmp
    assert first.name.startswith(f"prodbug-{os.getuid()}-")
    assert (first.stat().st_uid, first.stat().st_mode & 0o777) == (os.getuid(), 0o700)
    assert [r.getMessage() for r in caplog.records] == [
        f"runtime directory {taken} belongs to uid {attacker.uid}, not to you (uid 0); "
        f"set PRODBUG_RUNTIME_DIR to a directory of your own; using the private directory "
        f"{first} instead"]
    assert registry.resolve_runtime_dir(taken) == taken  # chosen by someone: not replaced,
    with pytest.raises(ConfigError, match="belongs to uid"):  # but refused when used
        registry.ensure_runtime_dir(taken)
    fake.kill()


def _entry_file(runtime_dir: Path, how: str) -> Path:
    """A PID.json for this very process in our own trusted directory, made wrong ``how``."""
    pid = os.getpid()
    sock = runtime_dir / f"{pid}.sock"
    elsewhere = runtime_dir / "elsewhere"
    elsewhere.mkdir()
    for path in (sock, elsewhere / f"{pid}.sock"):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()  # the socket file stays: enough for the checks
    entry = {"pid": pid, "endpoint": f"ipc://{sock}"}
    if how == "endpoint elsewhere":
        entry["endpoint"] = f"ipc://{elsewhere / sock.name}"
    if how == "dump file elsewhere":
        entry["dump_file"] = "/etc/shadow"
    real = runtime_dir / ("real.json" if how == "symlink" else f"{pid}.json")
    real.write_text(json.dumps(entry))
    real.chmod(0o620 if how == "group writable" else 0o600)
    if how == "symlink":
        (runtime_dir / f"{pid}.json").symlink_to(real)
    return real


@pytest.mark.parametrize(("how", "why"), [
    ("symlink", "it is a symlink"),
    ("group writable", "writable by others (mode 0620)"),
    ("endpoint elsewhere", "is not the socket beside it"),
    ("dump file elsewhere", "its dump file /etc/shadow is not"),
])
def test_entries_are_believed_only_as_the_agent_writes_them(
        runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str, why: str) -> None:
    monkeypatch.setenv("PRODBUG_RUNTIME_DIR", str(runtime_dir))
    _entry_file(runtime_dir, how)

    with pytest.raises(TargetUnreachable) as refused:
        registry.find_entry(os.getpid())
    notes: list[str] = []
    listed = list(registry.list_entries(notes=notes))

    assert "no trusted registry entry" in str(refused.value) and why in str(refused.value)
    assert listed == [] and len(notes) == 1 and why in notes[0]


def test_an_entry_as_the_agent_writes_it_is_believed(runtime_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRODBUG_RUNTIME_DIR", str(runtime_dir))
    _entry_file(runtime_dir, "right")
    endpoint = f"ipc://{runtime_dir}/{os.getpid()}.sock"

    assert registry.find_entry(os.getpid())["endpoint"] == endpoint
    assert [e["endpoint"] for e in registry.list_entries()] == [endpoint]


def test_hostile_names_are_shown_escaped(spawn: Callable[..., Target],
                                         base_env: dict[str, str]) -> None:
    target = spawn("escapes", env=base_env)
    env = {**base_env, "NO_COLOR": "1"}  # so that any ESC in the output is theirs
    pid = str(target.pid)

    stacks = run_cli("stacks", "--pid", pid, "--locals", "1", "--cpu-interval", "0", env=env)
    info = run_cli("info", "--pid", pid, env=env)
    ps = run_cli("ps", env=env)
    as_json = run_cli("stacks", "--pid", pid, "--json", env=env)

    for result in (stacks, info, ps, as_json):
        assert result.returncode == 0, result.stderr
        _no_raw(result.stdout, result.stderr)
    assert f"Thread {{}} 'evil{NASTY_SHOWN}'" in re.sub(r"Thread \d+", "Thread {}",
                                                         stacks.stdout)
    assert f"hidden{NASTY_SHOWN} (evil{NASTY_SHOWN}.py:4)" in stacks.stdout
    assert "title = '\\x1b]0;pwned\\x07'" in stacks.stdout
    (thing,) = [ln for ln in stacks.stdout.splitlines() if ln.strip().startswith("thing = ")]
    assert f"Pwn{NASTY_SHOWN}" in thing  # the class name, however saferepr shows it
    assert f"Process {pid}: " in stacks.stdout and stacks.stdout.split("\n")[0].endswith(
        NASTY_SHOWN)
    assert info.stdout.count(NASTY_SHOWN) == 1  # the command line (ps cuts it at 80)
    threads = json.loads(as_json.stdout)["processes"][0]["threads"]
    assert f"evil{NASTY}" in [t["name"] for t in threads]  # JSON keeps the text exact


def test_what_a_hostile_agent_says_is_shown_escaped(base_env: dict[str, str],
                                                   attacker: Attacker) -> None:
    fake = attacker.start("own")
    _plant(fake, 4242)
    endpoint = f"ipc://{attacker.shared}/prodbug-{attacker.uid}/4242.sock"  # named: no registry
    env = {**base_env, "NO_COLOR": "1"}

    stacks = run_cli("stacks", endpoint, env=env)
    audit = run_cli("audit", endpoint, env=env)
    info = run_cli("info", endpoint, env=env)

    assert [stacks.returncode, audit.returncode, info.returncode] == [0, 0, 1]
    _no_raw(stacks.stdout, audit.stdout, info.stderr)
    assert stacks.stdout.count(NASTY_SHOWN) == 7  # argv, python, implementation, name,
    # function, file, line
    assert audit.stdout == f"t  {NASTY_SHOWN}  cmd=x\\n2026-01-01 forged\n"  # one line
    assert info.stderr == f"prodbug info: {NASTY_SHOWN}\n"
    assert len(_connections(fake)) == 3


def test_our_colours_survive_and_theirs_do_not(spawn: Callable[..., Target],
                                               base_env: dict[str, str]) -> None:
    from prodbug.client import Client
    from prodbug.render import Style, render_stacks

    target = spawn("escapes", env=base_env)
    with Client(target.facts["ipc"]) as client:
        result = client.request("stacks", {"cpu_interval": 0, "locals": 1})

    text = render_stacks(result, Style(True))

    ours = re.compile(r"\x1b\[[0-9;]*m")
    assert "\x1b[1m" in text and NASTY_SHOWN in text
    _no_raw(ours.sub("", text))


def test_pdb_output_is_escaped(spawn: Callable[..., Target], base_env: dict[str, str]) -> None:
    target = spawn("escapes", env=base_env)
    child = pexpect.spawn(sys.executable, ["-m", "prodbug", "pdb", "--pid", str(target.pid),
                                           "--inspect", "parked"],
                          env=base_env, encoding="utf-8", timeout=60)
    child.logfile_read = io.StringIO()
    try:
        child.expect(r"\(Pdb\) ")
        child.sendline("print('<' + title + '>')")
        child.expect(r"<\\x1b\]0;pwned\\x07>\r\n", timeout=30)
        child.sendline("q")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()
    terminal = child.logfile_read.getvalue()
    assert "\x1b]0;pwned" not in terminal, terminal
