"""``ssh://[user@]host[:sshport][/AGENTPORT]``: the operator's own OpenSSH client carries it.

The CLI runs ``ssh`` (from PATH) as a child, so ``~/.ssh/config``, ssh-agent, jump hosts and
``known_hosts`` work as they do for the operator; host keys are checked as ssh always does.
Two ways through:

- to the agent's TCP port on the remote loopback (``/AGENTPORT``, else 7661): forwarded
  from a Unix socket in a private directory here (no local port for another user to take
  or reach), still CURVE end to end; with ``--pid N`` and an ``/AGENTPORT`` the door there
  relays to process N;
- ``--pid N`` with no ``/AGENTPORT``: the process's own ``ipc://`` socket, forwarded with
  OpenSSH's Unix-socket forwarding and found by a small ``python3`` run on the far side
  (with the registry's trust rules); ssh's login is the guard there, as a local user's uid is.

The tunnel lives exactly as long as the connection: it is closed with ``connect()``'s block,
and on Linux the kernel ends ssh if the CLI dies (``PR_SET_PDEATHSIG``, even on SIGKILL).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prodbug.config import DEFAULT_PORT
from prodbug.connect import CARRIERS, Carrier
from prodbug.errors import AuthError, ConfigError, ProdbugError, TargetUnreachable
from prodbug.registry import pid_alive
from prodbug.target import Target
from prodbug.textsafe import printable
from prodbug.transport import spawn

__all__ = ["SshAddress", "SshTunnel", "open_ssh", "parse_address"]

_ADDRESS = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*)"
    r"(?::(?P<port>\d{1,5}))?(?:/(?P<agent>\d{1,5}))?/?$")

#: A host name is at most 253 characters, a user name far less: nothing longer is asked for.
_MAX_ADDRESS = 400
#: What the far side's lookup may answer (one JSON line): more is a hostile or broken host.
_MAX_ANSWER = 64 << 10
#: Tries at starting the forward when ssh says its local end is taken.
_PORT_TRIES = 3


@dataclass(frozen=True)
class SshAddress:
    """What ``ssh://`` names: the login, and the agent's TCP port if one was given."""

    host: str
    user: str | None = None
    port: int | None = None
    agent_port: int | None = None

    @property
    def where(self) -> str:
        """The host as messages and ``ssh-keygen -R`` name it."""
        return f"[{self.host}]:{self.port}" if self.port else self.host

    def login_args(self) -> list[str]:
        """ssh's arguments for the login (after the options); ``--`` ends the options."""
        args = ["-p", str(self.port)] if self.port else []
        if self.user:
            args += ["-l", self.user]
        return [*args, "--", self.host]

    def ssh_command(self) -> str:
        """The plain ssh command an operator would type to reach the host."""
        port = f"-p {self.port} " if self.port else ""
        user = f"{self.user}@" if self.user else ""
        return f"ssh {port}{user}{self.host}"


def parse_address(text: str) -> SshAddress:
    """``[user@]host[:sshport][/AGENTPORT]``, or a ConfigError that shows the form."""
    match = _ADDRESS.match(text) if len(text) <= _MAX_ADDRESS else None
    if match is None:
        raise ConfigError(f'"ssh://{printable(text)}" is not ssh://[USER@]HOST[:SSHPORT]'
                          f"[/AGENTPORT] (e.g. ssh://ops@api-1, ssh://api-1:2222/7661)")
    ports = [int(p) if p else None for p in (match["port"], match["agent"])]
    for port in ports:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"port {port} is out of range (1-65535)")
    return SshAddress(match["host"].strip("[]"), match["user"], ports[0], ports[1])


# -- running ssh ----------------------------------------------------------------------------

def _ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise ConfigError(
            "ssh:// targets run your OpenSSH client, and there is no ssh on PATH: install it "
            "(Debian/Ubuntu: apt-get install openssh-client; Fedora/RHEL: dnf install "
            "openssh-clients), or tunnel yourself and use HOST:PORT")
    return found


def _base_argv(timeout: float) -> list[str]:
    argv = [_ssh_binary()]
    config = os.environ.get("PRODBUG_SSH_CONFIG")
    if config:
        argv += ["-F", str(Path(config).expanduser())]
    # BatchMode: ssh must never prompt inside the CLI (the terminal is pdb's, and stderr is
    # read here); passphrase keys work through ssh-agent, and an open ControlMaster is used.
    return [*argv, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(timeout))}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]


class _Ssh:
    """One ssh child: its own session (a Ctrl-C for the CLI is not ssh's), stderr kept."""

    def __init__(self, argv: list[str], stdin: int | None = subprocess.DEVNULL,
                 stdout: int | None = subprocess.DEVNULL) -> None:
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        # spawn: ssh dies with us, SIGKILL included (Linux).
        try:
            self.proc = spawn(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                              start_new_session=True)
        except OSError as exc:  # E2BIG, ENOMEM...: one line, not a traceback
            raise ConfigError(f"cannot run ssh: {exc.strerror or exc}") from None
        # Drained all along: ssh logs a line per refused forward, and a full pipe stops it.
        self._reader = threading.Thread(target=self._drain, daemon=True,
                                        name="prodbug-ssh-stderr")
        self._reader.start()

    def _drain(self) -> None:
        stream = self.proc.stderr
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self.stderr.append(line)

    def said(self) -> list[str]:
        """What ssh wrote, once it has exited (the reader catches up first)."""
        self._reader.join(2)
        return list(self.stderr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _ssh_error(address: SshAddress, lines: list[str], doing: str) -> ProdbugError:
    """OpenSSH's failure as one line that says what to do."""
    text = "\n".join(lines)
    where, host = address.where, address.host
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return AuthError(f"the host key of {where} changed: ssh refused to connect. Check with "
                         f"the host's owner, then remove the old key with: ssh-keygen -R "
                         f"'{where}'")
    if "Host key verification failed" in text or "host key is known" in text:
        return AuthError(f"the host key of {where} is not in your known_hosts: connect once "
                         f"with '{address.ssh_command()}' to check and accept it")
    if "Permission denied" in text:
        who = f"as {address.user}" if address.user else "(user from your ssh config)"
        return AuthError(
            f"ssh could not log in to {where} {who}: Permission denied. Load your key into "
            f"ssh-agent (ssh-add), or name it with IdentityFile in ~/.ssh/config; prodbug "
            f"runs ssh with BatchMode=yes, so it never asks for a password or passphrase")
    if "Could not resolve hostname" in text:
        return TargetUnreachable(f"ssh cannot resolve the host name {host!r}: check the "
                                 f"name, or add a Host entry for it to ~/.ssh/config")
    for why in ("Connection refused", "Connection timed out", "No route to host",
                "Network is unreachable", "Connection closed", "Connection reset"):
        if why in text:
            return TargetUnreachable(f"ssh cannot reach {where}: {why.lower()} (is sshd "
                                     f"running there, and the port right?)")
    last = printable(lines[-1]) if lines else "no message"
    return TargetUnreachable(f"ssh to {where} failed while {doing}: {last}")


# -- finding a process's socket on the far side -------------------------------------------

#: Run by the remote python3 (stdin) with the pid as argv[1]: prints one JSON line, the
#: socket of that process's agent or why there is none. Stdlib only, Python 3.6+: the far
#: side need not have prodbug. The same trust rules as prodbug.registry.find_entry.
_FIND = r'''
import glob, json, os, stat, sys, tempfile
pid = int(sys.argv[1])
def done(**answer):
    print(json.dumps(answer))
    sys.exit(0)
try:
    os.kill(pid, 0)
except ProcessLookupError:
    done(missing="no process %d" % pid)
except PermissionError:
    pass
uid = None
try:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[2])
except (OSError, ValueError, IndexError):
    pass
if uid is None:
    uid = os.getuid()
env = {}
try:
    with open("/proc/%d/environ" % pid, "rb") as f:
        for item in f.read().split(b"\0"):
            key, _, value = item.partition(b"=")
            env[key.decode("ascii", "replace")] = os.fsdecode(value)
except OSError:
    pass
dirs = []
def add(path):
    if path and os.path.isabs(path) and path not in dirs:
        dirs.append(path)
explicit = env.get("PRODBUG_RUNTIME_DIR", "")
if explicit.startswith("~/") and env.get("HOME"):
    explicit = os.path.join(env["HOME"], explicit[2:])
add(explicit)
if not explicit:
    if env.get("XDG_RUNTIME_DIR"):
        add(os.path.join(env["XDG_RUNTIME_DIR"], "prodbug"))
    for tmp in (env.get("TMPDIR"), env.get("TEMP"), env.get("TMP"), "/tmp", "/var/tmp"):
        if tmp:
            add(os.path.join(tmp, "prodbug-%d" % uid))
            for p in sorted(glob.glob(os.path.join(glob.escape(tmp), "prodbug-%d-*" % uid))):
                add(p)
    for p in sorted(glob.glob("/run/user/*/prodbug")):
        add(p)
    temp = glob.escape(tempfile.gettempdir())
    for p in sorted(glob.glob(os.path.join(temp, "prodbug-*"))):
        add(p)
refused = []
for d in dirs:
    try:
        st = os.lstat(d)
    except OSError:
        continue
    jpath, spath = os.path.join(d, "%d.json" % pid), os.path.join(d, "%d.sock" % pid)
    if not os.path.lexists(jpath):
        continue
    if (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != uid
            or stat.S_IMODE(st.st_mode) & 0o077):
        refused.append("%s is not a 0700 directory of uid %d" % (d, uid))
        continue
    try:
        fd = os.open(jpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        refused.append("%s: %s" % (jpath, exc.strerror))
        continue
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read(1 << 20)
    if (not stat.S_ISREG(st.st_mode) or st.st_uid != uid
            or stat.S_IMODE(st.st_mode) & 0o022):
        refused.append("%s is not a file of uid %d that only it may write" % (jpath, uid))
        continue
    try:
        entry = json.loads(data.decode("utf-8"))
    except ValueError:
        entry = None
    endpoint = entry.get("endpoint") if isinstance(entry, dict) else None
    if not (isinstance(endpoint, str) and endpoint.startswith("ipc://")
            and entry.get("pid") == pid):
        refused.append("%s is not a registry entry for pid %d" % (jpath, pid))
        continue
    claimed = endpoint[len("ipc://"):]
    try:
        same = claimed == spath or (os.path.basename(claimed) == "%d.sock" % pid
                                    and os.path.samefile(os.path.dirname(claimed), d))
    except OSError:
        same = False
    try:
        sst = os.lstat(spath)
    except OSError:
        refused.append("%s: no socket %s" % (jpath, spath))
        continue
    if not same or not stat.S_ISSOCK(sst.st_mode) or sst.st_uid != uid:
        refused.append("%s: its socket is not %s, a socket of uid %d" % (jpath, spath, uid))
        continue
    done(socket=spath, uid=uid)
done(none=True, uid=uid, refused=refused, looked=dirs)
'''


def _bounded_answer(ssh: _Ssh, question: bytes, timeout: float) -> bytes | None:
    """Send ``question`` on ssh's stdin and read its stdout up to a little past
    ``_MAX_ANSWER`` bytes (a hostile far side cannot fill our memory); None on timeout."""
    got: list[bytes] = []
    size = 0
    proc = ssh.proc

    def read() -> None:
        nonlocal size
        stream = proc.stdout
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            while size <= _MAX_ANSWER:
                chunk = stream.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    return
                got.append(chunk)
                size += len(chunk)

    reader = threading.Thread(target=read, daemon=True, name="prodbug-ssh-answer")
    reader.start()
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.write(question)
            proc.stdin.close()
    deadline = time.monotonic() + timeout
    reader.join(timeout)
    if reader.is_alive() and size <= _MAX_ANSWER:
        return None
    if size <= _MAX_ANSWER:  # its exit status tells a login failure from an answer
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    return b"".join(got)


def _find_socket(address: SshAddress, pid: int, timeout: float) -> str:
    """The path of process ``pid``'s agent socket on the far side, or why there is none."""
    argv = [*_base_argv(timeout), "-o", "ControlMaster=no", *address.login_args(),
            "python3", "-I", "-", str(pid)]
    ssh = _Ssh(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        out = _bounded_answer(ssh, _FIND.encode(), timeout + 1)
        if out is None:
            raise TargetUnreachable(f"ssh to {address.where} did not finish finding pid {pid}'s "
                                    f"socket within {timeout:g}s (--timeout)")
        if len(out) > _MAX_ANSWER:
            raise TargetUnreachable(f"{address.where} answered more than {_MAX_ANSWER >> 10} "
                                    f"KiB when asked for pid {pid}'s socket: not prodbug's "
                                    f"lookup (a login banner or profile script printing?)")
    finally:
        ssh.stop()
    lines = ssh.said()
    if ssh.proc.returncode == 255:
        raise _ssh_error(address, lines, f"finding pid {pid}")
    if ssh.proc.returncode == 127 or any("python3" in ln and "not found" in ln for ln in lines):
        raise ConfigError(
            f"--pid through ssh finds the process's socket with python3 on {address.host}, "
            f"and there is none on the login's PATH; or reach the agent's TCP port: "
            f"ssh://{address.host}/PORT --pid {pid}")
    try:
        answer = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError, RecursionError):
        answer = None
    refused = answer.get("refused", []) if isinstance(answer, dict) else None
    socket_path = answer.get("socket") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(refused, list) or (
            "socket" in answer and not (isinstance(socket_path, str)
                                        and socket_path.startswith("/"))):
        last = printable(lines[-1]) if lines else f"exit status {ssh.proc.returncode}"
        raise TargetUnreachable(f"could not look for pid {pid}'s socket on {address.where}: "
                                f"{last}; it answered no socket path")
    if isinstance(socket_path, str):
        return socket_path
    if "missing" in answer:
        raise TargetUnreachable(f"no process {pid} on {address.host}")
    who = f"{address.user}" if address.user else "the ssh login"
    if refused:
        raise TargetUnreachable(
            f"process {pid} on {address.host}: no trusted registry entry "
            f"({printable('; '.join(map(str, refused)))}); an entry counts only in a 0700 "
            f"directory of uid {answer.get('uid')}, the process's own")
    raise TargetUnreachable(
        f"process {pid} on {address.host} runs no prodbug agent that {who} can see (no "
        f"registry entry in its runtime directory); log in as its user or root, or use the "
        f"agent's TCP port: ssh://{address.host}/PORT --pid {pid}")


# -- the tunnel -----------------------------------------------------------------------------

class SshTunnel:
    """A running ``ssh -N -L``; ``endpoint`` is the local end of the forward."""

    def __init__(self, ssh: _Ssh, endpoint: str, label: str, relay_pid: int | None,
                 private_dir: Path | None, *, curve: bool) -> None:
        self._ssh = ssh
        self.endpoint = endpoint
        self.label = label
        self.relay_pid = relay_pid
        #: The far end is the agent's CURVE port (the local end a Unix socket all the same).
        self.curve = curve
        self._private_dir = private_dir

    @property
    def pid(self) -> int:
        """The ssh process's pid."""
        return self._ssh.proc.pid

    def close(self) -> None:
        """End ssh and reap it; remove the local socket's private directory. Idempotent."""
        self._ssh.stop()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


def _probe(ssh: _Ssh, family: int, where: object, deadline: float) -> bool | None:
    """Wait for the forward: True when a ZMTP peer answers through it, False when ssh
    forwarded but nothing answered on the far side, None when ssh exited."""
    while True:
        if ssh.proc.poll() is not None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(remaining)
            try:
                probe.connect(where)  # type: ignore[arg-type]
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)  # ssh is still logging in: its listener is not there yet
                continue
            try:
                first = probe.recv(1)
            except TimeoutError:
                raise
            except OSError:
                first = b""
        if ssh.proc.poll() is not None:
            return None
        # Every ZMTP peer opens with its signature's 0xFF; ssh closes a forward it could
        # not open on the far side.
        return first == b"\xff"


def _tunnel(address: SshAddress, forward: Callable[[], tuple[str, int, object, str]],
            timeout: float, what: str, hint: str) -> tuple[_Ssh, str]:
    """Start ``ssh -N -L`` (choosing the local end again if ssh finds it taken)."""
    for _ in range(_PORT_TRIES):
        spec, family, where, endpoint = forward()
        argv = [*_base_argv(timeout), "-N", "-o", "ExitOnForwardFailure=yes",
                # Its own connection: a forward made through a shared master would outlive us.
                "-o", "ControlPath=none", "-L", spec, *address.login_args()]
        ssh = _Ssh(argv)
        try:
            answered = _probe(ssh, family, where, time.monotonic() + timeout)
        except TimeoutError:
            ssh.stop()
            raise TargetUnreachable(
                f"the ssh tunnel to {address.where} was not ready within {timeout:g}s "
                f"(--timeout): {printable(ssh.said()[-1]) if ssh.said() else 'no answer'}"
            ) from None
        except BaseException:
            ssh.stop()
            raise
        if answered:
            return ssh, endpoint
        ssh.stop()
        lines = ssh.said()
        if answered is False:
            why = next((ln for ln in lines if "open failed" in ln), "")
            if "prohibited" in why:
                raise TargetUnreachable(f"sshd on {address.where} refuses to forward ({why}): "
                                        f"its AllowTcpForwarding/AllowStreamLocalForwarding "
                                        f"or the key's restrictions forbid it")
            raise TargetUnreachable(f"nothing listens on {what} on {address.host}: ssh logged "
                                    f"in, but no prodbug agent answered there ({hint})")
        if not any("Address already in use" in ln or "cannot listen" in ln.lower()
                   for ln in lines):
            raise _ssh_error(address, lines, "opening the tunnel")
    raise TargetUnreachable(f"could not open the local end of the ssh tunnel to "
                            f"{address.where} in {_PORT_TRIES} tries")


def _sweep() -> None:
    """Remove the private directories of our CLIs that were killed (SIGKILL) mid-tunnel."""
    import glob

    pattern = os.path.join(glob.escape(tempfile.gettempdir()), "prodbug-ssh-*-*")
    for path in glob.glob(pattern):
        owner = os.path.basename(path).split("-")[2]
        with contextlib.suppress(OSError, ValueError):
            st = os.lstat(path)
            if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
                    and not pid_alive(int(owner))):
                shutil.rmtree(path, ignore_errors=True)


def _private_dir() -> Path:
    """A fresh 0700 directory for the local end of a forward: the socket is ours alone
    (no local port another user could take or reach). Named for our pid, so a later CLI
    can remove it if we are killed before we can."""
    _sweep()
    return Path(tempfile.mkdtemp(prefix=f"prodbug-ssh-{os.getpid()}-"))


def open_ssh(target: Target, timeout: float) -> Carrier:
    """Open the tunnel that ``target`` (``scheme="ssh"``) names; see the module docstring."""
    address = parse_address(target.address)
    shown = f"ssh://{target.address}"
    to_socket = target.pid is not None and address.agent_port is None
    remote = _find_socket(address, target.pid, timeout) if to_socket and target.pid else ""
    agent_port = address.agent_port or DEFAULT_PORT
    private = _private_dir()
    local = private / "agent.sock"
    try:
        if to_socket:
            what, hint = remote, "the process's agent stopped?"
            spec = f"{local}:{remote}"
        else:
            # To the agent's TCP port, from a Unix socket here: CURVE runs end to end
            # through it (the carrier says so), and no local port exists to squat.
            what = f"127.0.0.1:{agent_port}"
            hint = (f"its agent listens where PRODBUG_LISTEN says: give that port as "
                    f"ssh://{address.host}/PORT, or --pid N to reach a process's own socket")
            spec = f"{local}:127.0.0.1:{agent_port}"
        ssh, endpoint = _tunnel(
            address, lambda: (spec, socket.AF_UNIX, str(local), f"ipc://{local}"),
            timeout, what, hint)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    if to_socket:
        return SshTunnel(ssh, endpoint, f"pid {target.pid} on {shown}", None, private,
                         curve=False)
    label = f"pid {target.pid} via {shown}" if target.pid is not None else shown
    return SshTunnel(ssh, endpoint, label, target.pid, private, curve=True)


CARRIERS["ssh"] = open_ssh
