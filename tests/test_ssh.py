"""``ssh://`` targets through a real sshd: both ways through, the sessions, and the faults.

After every command no ssh client of ours is left running (the tunnel lives exactly as
long as the command, SIGKILL of the CLI included).
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import TARGETS, Keys, Target, run_cli, short_tmp, still_counting, wait_for
from dapclient import DapClient
from sshd import Sshd, running_sshd, why_not

PROMPT = r"\(Pdb\) "
SERVICE = str(TARGETS / "service.py")
WORK_LINE = next(n for n, t in enumerate(Path(SERVICE).read_text().splitlines(), 1)
                 if t.strip() == "i += 1")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def cli_tmp() -> Iterator[Path]:
    """The CLI's TMPDIR: where it keeps a forwarded socket (short: a unix socket path)."""
    with short_tmp("pbs-", 0o700) as path:
        yield path


@pytest.fixture
def ssh_env(sshd: Sshd, base_env: dict[str, str], cli_tmp: Path) -> dict[str, str]:
    """The CLI's environment: ssh reads only the tests' config (its own known_hosts)."""
    return {**base_env, "PRODBUG_SSH_CONFIG": str(sshd.client_config("ok")),
            "TMPDIR": str(cli_tmp)}


@pytest.fixture
def no_ssh_left(sshd: Sshd) -> Callable[[], None]:
    def check() -> None:
        assert wait_for(lambda: not sshd.ssh_processes()), sshd.ssh_processes()
    return check


def _tcp_service(spawn: Callable[..., Target], agent_env: dict[str, str],
                 tmp_path: Path) -> Target:
    target = spawn("service", env={**agent_env, "COUNTER_FILE": str(tmp_path / "counter"),
                                   "PRODBUG_SESSION_HEARTBEAT": "2"})
    target.facts["counter"] = str(tmp_path / "counter")
    return target


def test_stacks_through_a_tcp_forward(sshd: Sshd, spawn, agent_env, ssh_env, *, keys: Keys,
                                      no_ssh_left) -> None:
    target = spawn("threads", env=agent_env)
    port = target.tcp.rsplit(":", 1)[1]
    env = {**ssh_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
           "PRODBUG_SERVER_KEY": str(keys.server_public)}
    for extra in ((), ("--pid", str(target.pid))):  # the door there relays a --pid
        result = run_cli("stacks", f"{sshd.url}/{port}", *extra, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert [p["pid"] for p in json.loads(result.stdout)["processes"]] == [target.pid]
        no_ssh_left()


def test_stacks_through_the_process_socket(sshd: Sshd, service: Target, ssh_env,
                                           cli_tmp: Path, no_ssh_left) -> None:
    # No keys, no TCP port: the agent's ipc socket, found on the far side from the
    # process's own PRODBUG_RUNTIME_DIR (the ssh login does not have that variable).
    result = run_cli("stacks", sshd.url, "--pid", str(service.pid), "--json", env=ssh_env)
    assert result.returncode == 0, result.stderr
    threads = json.loads(result.stdout)["processes"][0]["threads"]
    assert "worker" in [t["name"] for t in threads]
    no_ssh_left()
    assert list(cli_tmp.iterdir()) == []  # the forwarded socket's private dir is gone


def test_pdb_session_through_ssh(sshd: Sshd, service: Target, ssh_env, cli,
                                 no_ssh_left) -> None:
    child = cli("pdb", sshd.url, "--pid", str(service.pid), "--thread", "worker", env=ssh_env)
    child.expect("stopped thread 'worker'")
    child.expect(PROMPT)
    child.sendline("p i")
    child.expect(r"\r\n(\d+)\r\n")
    assert int(child.match.group(1)) > 0
    assert sshd.ssh_processes()  # the tunnel is up for the whole session
    child.sendline("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    no_ssh_left()
    assert still_counting(service)


# The operator vanishes and the heartbeat ends it: 5 s, as every ping crosses ssh
# (a loaded machine delays them by seconds), and 2 s once lapsed mid-test.
@pytest.mark.heartbeat(5)
def test_sigkill_of_the_cli_leaves_no_ssh_and_the_thread_resumes(sshd: Sshd, service: Target,
                                                                 ssh_env, cli, *, cli_tmp: Path,
                                                                 no_ssh_left) -> None:
    child = cli("pdb", sshd.url, "--pid", str(service.pid), "--thread", "worker", env=ssh_env)
    child.expect(PROMPT)
    assert sshd.ssh_processes()
    child.kill(signal.SIGKILL)
    child.close()  # reaped: its pid is gone
    no_ssh_left()
    assert still_counting(service)  # the session's heartbeat (5 s) ended it
    # The next ssh:// CLI removes what the killed one could not.
    assert [p.name.split("-")[2] for p in cli_tmp.iterdir()] == [str(child.pid)]
    again = run_cli("stacks", sshd.url, "--pid", str(service.pid), env=ssh_env)
    assert again.returncode == 0, again.stderr
    assert list(cli_tmp.iterdir()) == []


def test_vscode_through_ssh(sshd: Sshd, spawn, agent_env, ssh_env, *, keys: Keys, vscode,
                            tmp_path: Path, no_ssh_left) -> None:
    target = _tcp_service(spawn, agent_env, tmp_path)
    port = target.tcp.rsplit(":", 1)[1]
    env = {**ssh_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.debugger),
           "PRODBUG_SERVER_KEY": str(keys.server_public)}
    running = vscode(f"{sshd.url}/{port}", "--pid", str(target.pid), "--port", "0", "--yes",
                     env=env)
    dap = DapClient(running.port())
    dap.attach({SERVICE: [WORK_LINE]})
    stopped = dap.event("stopped")["body"]
    frames = dap.request("stackTrace", threadId=stopped["threadId"], startFrame=0,
                         levels=5)["stackFrames"]
    assert (frames[0]["name"], frames[0]["line"]) == ("work", WORK_LINE)
    dap.set_breakpoints(SERVICE, [])
    dap.request("continue", threadId=stopped["threadId"])
    dap.request("disconnect", restart=False, terminateDebuggee=False)
    dap.close()
    assert sshd.ssh_processes()
    running.stop()  # SIGKILL: the kernel ends ssh with the CLI
    no_ssh_left()
    assert still_counting(target)


# -- faults: OpenSSH's failure, one line, what to do -----------------------------------------

def _fault_env(sshd: Sshd, ssh_env: dict[str, str], fault: str) -> dict[str, str]:
    if fault == "refused key":
        return {**ssh_env, "PRODBUG_SSH_CONFIG": str(sshd.client_config("k", "stranger"))}
    if fault == "changed host key":
        other = (sshd.root / "other_host_key.pub").read_text().split()[:2]
        return {**ssh_env,
                "PRODBUG_SSH_CONFIG": str(sshd.client_config("h", known=" ".join(other)))}
    if fault == "unknown host key":
        return {**ssh_env, "PRODBUG_SSH_CONFIG": str(sshd.client_config("u", known=""))}
    if fault == "no ssh on PATH":
        bare = sshd.root / "bin-without-ssh"
        bare.mkdir(exist_ok=True)
        return {**ssh_env, "PATH": str(bare)}
    return ssh_env


@pytest.mark.parametrize(("fault", "url", "code", "expected"), [
    ("unknown host", "ssh://root@no-such-host.invalid", 3,
     "ssh cannot resolve the host name 'no-such-host.invalid'"),
    ("refused key", "", 4, "Permission denied. Load your key into ssh-agent (ssh-add)"),
    ("changed host key", "", 4, "changed: ssh refused to connect. Check with the host's owner, "
                                "then remove the old key with: ssh-keygen -R '[127.0.0.1]:"),
    ("unknown host key", "", 4, "is not in your known_hosts: connect once with 'ssh -p "),
    ("no ssh on PATH", "", 2, "there is no ssh on PATH: install it"),
    ("no agent on the port", "/1", 3, "nothing listens on 127.0.0.1:1 on 127.0.0.1"),
])
def test_ssh_faults(sshd: Sshd, ssh_env, no_ssh_left, *, fault: str, url: str, code: int,
                    expected: str) -> None:
    if fault == "no ssh on PATH":
        assert shutil.which("ssh", path=_fault_env(sshd, ssh_env, fault)["PATH"]) is None
    target = url if url.startswith("ssh://") else sshd.url + url
    result = run_cli("stacks", target, env=_fault_env(sshd, ssh_env, fault), timeout=60)
    assert (result.returncode, result.stdout) == (code, ""), result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    no_ssh_left()


def test_pid_faults_on_the_far_side(sshd: Sshd, ssh_env, no_ssh_left) -> None:
    dead = run_cli("stacks", sshd.url, "--pid", "4194303", env=ssh_env)
    assert (dead.returncode, dead.stderr.strip()) == (
        3, "prodbug stacks: no process 4194303 on 127.0.0.1")
    plain = sshd.proc.pid  # a process with no agent (and no registry entry anywhere)
    none = run_cli("stacks", sshd.url, "--pid", str(plain), env=ssh_env)
    assert none.returncode == 3
    assert f"process {plain} on 127.0.0.1 runs no prodbug agent that {sshd.user} can see" \
        in none.stderr
    no_ssh_left()

