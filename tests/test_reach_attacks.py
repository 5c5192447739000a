"""Attacks on the client-side reach: ssh://, kube://, named targets and fleets.

Each test is one attack. Seven of them first showed a hole (red), closed since; the
others show the feature holding. The hostile parties are real:
a second local uid (``as_other``), a real sshd, and stand-in ``ssh``/``kubectl`` programs
that behave as a hostile remote host or cluster would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import psutil
import pytest
from conftest import Keys, OtherUser, Target, run_cli, short_tmp, still_counting
from sshd import Sshd, running_sshd, why_not

PROMPT = r"\(Pdb\) "
DEAD_PID = 4194303  # above any pid_max: never a live process


def _script(path: Path, body: str) -> Path:
    """An executable Python program at ``path`` (run by this test's Python)."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    made = tmp_path / "bin"
    made.mkdir()
    return made


@pytest.fixture
def key_env(base_env: dict[str, str], keys: Keys) -> dict[str, str]:
    return {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


def _on_path(env: dict[str, str], bin_dir: Path) -> dict[str, str]:
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- (2) hostile TARGET strings and config values: nothing reaches ssh's or kubectl's argv ----

_RECORDER = """
import os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(repr(sys.argv) + "\\n")
sys.exit(255)
"""


@pytest.mark.parametrize("text", [
    "ssh://-oProxyCommand=touch${IFS}/tmp/pwned",
    "ssh://host:22/1;rm",
    "ssh://a b@host",
    "ssh://-l@host",
    "ssh://-oProxyCommand=x@host",
    "ssh://host -oProxyCommand=x",
    "ssh://host%h",
    "ssh://host/7661 --pid 1",
    "kube://--kubeconfig=/tmp/evil",
    "kube://ns/--address=0.0.0.0",
    "kube://-n/api",
    "kube://default/pod/--context=evil",
    "kube://label:--all-namespaces",
    "kube://label:app=a\nb",
    "gopher://host",
])
def test_hostile_target_never_reaches_ssh_or_kubectl(text: str, bin_dir: Path, key_env,
                                                     tmp_path: Path) -> None:
    record = tmp_path / "argv"
    for name in ("ssh", "kubectl"):
        _script(bin_dir / name, _RECORDER)
    env = {**_on_path(key_env, bin_dir), "RECORD": str(record)}
    result = run_cli("stacks", text, "--timeout", "2", env=env)
    _one_line_error(result, 2)
    assert not record.exists(), record.read_text()


@pytest.mark.parametrize("address", ["ssh://-oProxyCommand=id", "file:///etc/passwd",
                                     "kube://--kubeconfig=x", "ssh://h\x1b[2J"])
def test_hostile_config_address_is_refused_when_read(address: str, bin_dir: Path, key_env,
                                                     tmp_path: Path) -> None:
    record = tmp_path / "argv"
    _script(bin_dir / "ssh", _RECORDER)
    config = tmp_path / "config.toml"
    config.write_text(f"[targets.api]\naddress = {json.dumps(address)}\n")
    config.chmod(0o600)
    env = {**_on_path(key_env, bin_dir), "RECORD": str(record), "PRODBUG_CONFIG": str(config)}
    result = run_cli("stacks", "api", env=env)
    _one_line_error(result, 2)
    assert "\x1b" not in result.stderr
    assert not record.exists()


def test_targets_file_of_100k_lines_is_refused_at_once(tmp_path: Path, key_env) -> None:
    listed = tmp_path / "targets.txt"
    listed.write_text("".join(f"127.0.0.{i % 250 + 1}:{1000 + i % 60000}\n"
                              for i in range(100_000)))
    result = run_cli("stacks", "--targets", str(listed), env=key_env)
    _one_line_error(result, 2)
    assert "at most 10000" in result.stderr


def test_huge_ssh_address_from_config_is_one_line(tmp_path: Path, key_env) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[targets.api]\naddress = "ssh://{"a" * 200_000}"\n')
    config.chmod(0o600)
    result = run_cli("stacks", "api", "--timeout", "2",
                     env={**key_env, "PRODBUG_CONFIG": str(config)})
    _one_line_error(result, 2)


# -- (3) a hostile remote host: what its lookup script prints ---------------------------------

_FAKE_SSH = """
import os, sys
sys.stdin.read()
out = os.environ["FAKE_SSH_OUT"]
if out == "flood":
    chunk = b"A" * (1 << 20)
    for _ in range(int(os.environ["FLOOD_MIB"])):
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.write(b"\\n")
else:
    sys.stdout.write(out + "\\n")
"""


@pytest.mark.parametrize("answer", ["5", '"socket"', '["socket"]', '{"refused": 5}'])
def test_hostile_remote_answer_is_one_line(answer: str, bin_dir: Path, base_env) -> None:
    _script(bin_dir / "ssh", _FAKE_SSH)
    env = {**_on_path(base_env, bin_dir), "FAKE_SSH_OUT": answer}
    result = run_cli("stacks", "ssh://api-1", "--pid", "42", "--timeout", "2", env=env)
    _one_line_error(result, 3)


def test_hostile_remote_escape_sequences_are_not_printed(bin_dir: Path, base_env) -> None:
    _script(bin_dir / "ssh", _FAKE_SSH)
    answer = json.dumps({"none": True, "uid": "\x1b]0;PWNED\x07",
                         "refused": ["\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07"]})
    env = {**_on_path(base_env, bin_dir), "FAKE_SSH_OUT": answer}
    result = run_cli("stacks", "ssh://api-1", "--pid", "42", "--timeout", "2", env=env)
    _one_line_error(result, 3)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def _run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run ``argv``; its exit status and peak RSS in KiB (from wait4, no sampling)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                proc.kill()
                os.waitpid(proc.pid, 0)
        proc.returncode = 0  # reaped above: Popen must not wait again
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss


def test_hostile_remote_flood_is_bounded(bin_dir: Path, base_env) -> None:
    _script(bin_dir / "ssh", _FAKE_SSH)
    argv = [sys.executable, "-m", "prodbug", "stacks", "ssh://api-1", "--pid", "42",
            "--timeout", "5"]
    env = _on_path(base_env, bin_dir)
    _, small = _run_measured(argv, {**env, "FAKE_SSH_OUT": "flood", "FLOOD_MIB": "0"})
    code, flooded = _run_measured(argv, {**env, "FAKE_SSH_OUT": "flood", "FLOOD_MIB": "96"})
    assert code == 3
    # 96 MiB more from the remote must not mean (at least) 96 MiB more in the CLI.
    assert flooded - small < 32 << 10, (small, flooded)


# -- (3) a hostile cluster: what kubectl prints --------------------------------------------

_HOSTILE_KUBECTL = """
import os, socket, sys
if "port-forward" not in sys.argv:
    sys.exit(1)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
own = listener.getsockname()[1]
lure = os.environ.get("LURE_PORT")
if lure:  # a warning the API server relays (an admission webhook on pods/portforward)
    print('Warning: webhook "policy.example" says: Forwarding from 127.0.0.1:%s -> 7661'
          % lure, flush=True)
print("Forwarding from 127.0.0.1:%d -> 7661" % own, flush=True)
while True:
    conn, _ = listener.accept()
    print("Handling connection for %d" % own, flush=True)
    sys.stderr.write("E1130 12:00:00.000000   1 portforward.go:413] an error occurred "
                     "forwarding: \\x1b]0;PWNED\\x07\\x1b[2Jconnection refused\\n")
    sys.stderr.flush()
    conn.close()
"""


def test_kube_warning_cannot_choose_the_local_port(bin_dir: Path, key_env) -> None:
    _script(bin_dir / "kubectl", _HOSTILE_KUBECTL)
    with socket.socket() as lure:
        lure.bind(("127.0.0.1", 0))
        lure.listen(8)
        env = {**_on_path(key_env, bin_dir), "LURE_PORT": str(lure.getsockname()[1])}
        result = run_cli("stacks", "kube://api-0", "--timeout", "2", env=env)
        lure.settimeout(0)
        with pytest.raises(BlockingIOError):  # no connection from the CLI waits there
            lure.accept()[0].close()
    assert result.returncode in (3, 4), result.stderr  # its own port is no agent


def test_kube_error_line_escape_sequences_are_not_printed(bin_dir: Path, key_env) -> None:
    _script(bin_dir / "kubectl", _HOSTILE_KUBECTL)
    result = run_cli("stacks", "kube://api-0", "--timeout", "2",
                     env=_on_path(key_env, bin_dir))
    assert result.returncode in (3, 4), result.stderr  # its port is no agent
    assert "PWNED" in result.stderr  # the line was shown ...
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr  # ... made safe


# -- (5) fleets: many hanging targets -------------------------------------------------------

@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port on 0.0.0.0 that accepts (in the kernel) and never answers: every
    127.0.0.N:PORT is a target that hangs."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(4096)
        yield int(s.getsockname()[1])


def _peak_threads(proc: subprocess.Popen[str], seen: list[int]) -> None:
    with contextlib.suppress(psutil.Error):
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            seen.append(ps.num_threads())
            seen.append(-ps.num_fds())
            time.sleep(0.05)


def _fleet(black_hole: int, env: dict[str, str], tmp_path: Path,
           timeout: float) -> tuple[subprocess.CompletedProcess[str], float, list[int]]:
    listed = tmp_path / "fleet.txt"
    listed.write_text("".join(f"127.0.{i // 250}.{i % 250 + 1}:{black_hole}\n"
                              for i in range(200)))
    argv = [sys.executable, "-m", "prodbug", "stacks", "--targets", str(listed), "--json",
            "--cpu-interval", "0", "--timeout", str(timeout)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: list[int] = []
    watcher = threading.Thread(target=_peak_threads, args=(proc, seen), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        watcher.join(10)
    took = time.monotonic() - started
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), took, seen


def test_fleet_of_200_hanging_targets_stays_bounded(black_hole: int, key_env,
                                                    tmp_path: Path) -> None:
    timeout = 0.6  # each of the 7 rounds waits this long: short keeps the suite lean
    result, took, seen = _fleet(black_hole, key_env, tmp_path, timeout)
    assert result.returncode == 3, result.stderr
    entries = json.loads(result.stdout)["targets"]
    assert len(entries) == 200 and not any(e["ok"] for e in entries)
    threads = max(n for n in seen if n > 0)
    fds = max(-n for n in seen if n < 0)
    # Bounded: the pool (32) with a zmq context each (IO thread + reaper), a few fds each.
    assert threads <= 32 * 4 + 16 and fds <= 32 * 12 + 64, (threads, fds)
    # Time: ceil(200/32) = 7 rounds of --timeout (docs/fleets.md says so); measured, not
    # asserted here (no timing thresholds in tests).
    print(f"200 hanging targets, --timeout {timeout}: {took:.1f}s")


# -- (1) a second local user on the operator's machine -------------------------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """The CLI's TMPDIR, shaped like /tmp: world-writable and sticky."""
    with short_tmp("pbr-", 0o1777) as path:
        yield path


@pytest.fixture
def ssh_env(sshd: Sshd, base_env: dict[str, str], shared_tmp: Path) -> dict[str, str]:
    # A config others may read (the other user's processes never need it).
    return {**base_env, "PRODBUG_SSH_CONFIG": str(sshd.client_config("ok")),
            "TMPDIR": str(shared_tmp)}


_SQUATTER = r"""
import os, socket, sys, time
# Watch every process's command line for an ssh -L 127.0.0.1:PORT:..., bind PORT first
# (while ssh still logs in), and answer like a ZMTP peer.
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"-L" in argv and b"ExitOnForwardFailure=yes" in argv:
            spec = argv[argv.index(b"-L") + 1].decode()
            if spec.startswith("127.0.0.1:"):
                port = int(spec.split(":")[1])
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                s.listen(8)
                print("BOUND", port, flush=True)
                s.settimeout(15)
                n = 0
                try:
                    while True:
                        c, _ = s.accept()
                        n += 1
                        c.sendall(b"\xff" + b"\0" * 8 + b"\x7f")
                        print("CONNECTION", n, flush=True)
                except OSError:
                    pass
                sys.exit(0)
    time.sleep(0.002)
"""


def test_other_user_cannot_squat_the_tcp_forward_port(sshd: Sshd, ssh_env, bin_dir: Path,
                                                      as_other, key_env) -> None:
    # A login that takes 0.5 s, as over a long link.
    real = subprocess.run(["sh", "-c", "command -v ssh"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nsleep 0.5\nexec {shlex.quote(real)} \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    squatter = as_other(_SQUATTER)
    env = _on_path({**ssh_env, **{k: key_env[k] for k in key_env if k.startswith("PRODBUG_")
                                   and k.endswith("KEY")}}, bin_dir)
    result = run_cli("stacks", f"{sshd.url}/7661", "--timeout", "3", env=env)
    squatter.kill()
    out, _ = squatter.communicate(timeout=10)
    assert result.returncode == 3
    assert "CONNECTION" not in out, (out, result.stderr)


def test_ipc_forward_is_private_and_the_sweep_spares_others(
        sshd: Sshd, ssh_env, shared_tmp: Path, service: Target, *, as_other,
        monkeypatch, tmp_path: Path) -> None:
    # What another uid plants in the shared TMPDIR beforehand, with a dead CLI's pid:
    # a directory of its own, and a symlink to a directory of ours.
    ours = tmp_path / "precious"
    ours.mkdir()
    (ours / "keep").write_text("x")
    planted = as_other(
        "import os, sys\n"
        "os.mkdir(os.path.join(sys.argv[1], 'prodbug-ssh-%s-theirs' % sys.argv[2]), 0o755)\n"
        "os.symlink(sys.argv[3], os.path.join(sys.argv[1], 'prodbug-ssh-%s-link' % "
        "sys.argv[2]))\n",
        str(shared_tmp), str(DEAD_PID), str(ours))
    assert planted.wait(30) == 0, planted.communicate()
    stale = shared_tmp / f"prodbug-ssh-{DEAD_PID}-stale"  # ours, from a killed CLI
    stale.mkdir(mode=0o700)

    from prodbug.connect import connect

    for key, value in ssh_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("tempfile.tempdir", None)
    with connect(sshd.url, service.pid, timeout=10) as conn:
        socket_path = Path(conn.client.endpoint.removeprefix("ipc://"))
        private = socket_path.parent
        st = private.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert private.name.startswith(f"prodbug-ssh-{os.getpid()}-")
        # The other uid, while the tunnel is open: no way to the socket.
        probe = as_other(
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1]); print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n", str(socket_path))
        out, _ = probe.communicate(timeout=30)
        assert out.strip() == "PermissionError"
        assert conn.client.request("info", {})["pid"] == service.pid
    assert not private.exists()
    assert not stale.exists()  # our killed CLI's directory was swept ...
    assert (shared_tmp / f"prodbug-ssh-{DEAD_PID}-theirs").is_dir()  # ... not theirs
    assert (shared_tmp / f"prodbug-ssh-{DEAD_PID}-link").is_symlink()
    assert (ours / "keep").exists()  # nor what their symlink points at


def test_config_in_a_directory_others_may_write_is_refused(as_other, keys: Keys,
                                                           key_env) -> None:
    with short_tmp("pbc-", 0o777) as shared:  # e.g. a team folder; not sticky
        _swap_key_and_pin(as_other, keys, key_env, shared)


def _swap_key_and_pin(as_other: Callable[..., subprocess.Popen[str]], keys: Keys,
                      key_env: dict[str, str], shared: Path) -> None:
    """In a folder others may write, the other uid could swap server.key and delete
    known_agents between runs (a fresh pin of their key): nothing there is trusted, not
    even on first use, and no pin is written."""
    (shared / "server.key").write_text(keys.server_public.read_text())
    config = shared / "config.toml"
    config.write_text('[targets.api]\naddress = "127.0.0.1:1"\nserver_key = "server.key"\n')
    config.chmod(0o600)
    env = {k: v for k, v in key_env.items() if k != "PRODBUG_SERVER_KEY"}
    env["PRODBUG_CONFIG"] = str(config)
    first = run_cli("stacks", "api", "--timeout", "1", env=env)
    _one_line_error(first, 2)
    assert "writable by others" in first.stderr
    assert not (shared / "known_agents").exists()
    swap = as_other(  # what the folder allows the other uid
        "import os, sys\n"
        "d = sys.argv[1]\n"
        "os.unlink(os.path.join(d, 'server.key'))\n"
        "open(os.path.join(d, 'server.key'), 'w').write(sys.argv[2])\n",
        str(shared), keys.stranger.with_suffix(".key").read_text())
    assert swap.wait(30) == 0, swap.communicate()
    again = run_cli("stacks", "api", "--timeout", "1", env=env)
    _one_line_error(again, 2)
    assert not (shared / "known_agents").exists()


def test_config_owned_by_another_user_is_refused(as_other, other_user: OtherUser,
                                                  key_env) -> None:
    with short_tmp("pbo-", 0o755) as folder:
        os.chown(folder, other_user.uid, other_user.gid)
        _plant_config(as_other, other_user, key_env, folder)


def _plant_config(as_other: Callable[..., subprocess.Popen[str]], other_user: OtherUser,
                  key_env: dict[str, str], folder: Path) -> None:
    made = as_other(
        "import os, sys\n"
        "p = os.path.join(sys.argv[1], 'config.toml')\n"
        "open(p, 'w').write('[targets.api]\\naddress = \"127.0.0.1:1\"\\n')\n"
        "os.chmod(p, 0o600); os.chmod(sys.argv[1], 0o755)\n", str(folder))
    assert made.wait(30) == 0, made.communicate()
    result = run_cli("stacks", "api", env={**key_env,
                                           "PRODBUG_CONFIG": str(folder / "config.toml")})
    _one_line_error(result, 2)
    assert f"belongs to uid {other_user.uid}" in result.stderr


# -- (4) a tunnel that dies under a pdb session ---------------------------------------------

# The operator vanishes and the heartbeat ends it: 5 s, as every ping crosses ssh
# (a loaded machine delays them by seconds), and 2 s once lapsed mid-test.
@pytest.mark.heartbeat(5)
def test_ssh_killed_under_pdb_ends_the_cli_and_the_thread_resumes(sshd: Sshd, service: Target,
                                                                  ssh_env, cli) -> None:
    child = cli("pdb", sshd.url, "--pid", str(service.pid), "--thread", "worker",
                "--timeout", "5", env=ssh_env)
    child.expect(PROMPT)
    (tunnel,) = [p for p in sshd.ssh_processes() if "-N" in p.cmdline()]
    tunnel.kill()
    child.sendline("p i")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 3, child.logfile_read.getvalue()
    assert still_counting(service)  # the session's heartbeat lapsed: the worker resumes

