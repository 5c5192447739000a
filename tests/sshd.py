"""A real, throwaway OpenSSH server for the ssh:// tests, and client configs that trust it.

Everything lives in one temp directory: sshd's host key and config, the client's keys, its
known_hosts and its ``ssh -F`` config (given to prodbug as PRODBUG_SSH_CONFIG). Nothing of
the machine's own ssh setup is read or changed (but /run/sshd, which root's sshd needs).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"


def why_not() -> str | None:
    """Why no sshd can be run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is absent (scripts/test installs openssh-server when run as root)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "the OpenSSH client (ssh, ssh-keygen) is not on PATH"
    return None


def keygen(path: Path) -> str:
    """A new ed25519 key at ``path``; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    host_key: str  # the server's public key line
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def client_config(self, name: str, identity: str = "client",
                      known: str | None = None) -> Path:
        """An ``ssh -F`` file: key ``identity``, a known_hosts holding ``known`` for this
        server (its real host key by default; "" for none)."""
        known_hosts = self.root / f"known_hosts.{name}"
        line = self.host_key if known is None else known
        known_hosts.write_text(f"[127.0.0.1]:{self.port} {line}\n" if line else "")
        config = self.root / f"ssh_config.{name}"
        config.write_text(
            "Host *\n"
            f"  IdentityFile {self.root / identity}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n")
        return config

    def ssh_processes(self) -> list[psutil.Process]:
        """ssh clients still running against this server (by its port on their command)."""
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] == "ssh" and str(self.port) in (proc.info["cmdline"] or []):
                    found.append(proc)
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(root: Path, user: str, port: int) -> tuple[subprocess.Popen[str], list[str], bool]:
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nLogLevel INFO\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "Server listening on" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc.reader = reader  # type: ignore[attr-defined]  # joined before stderr is closed
    ready.wait(30)
    return proc, log, proc.poll() is None and any("Server listening" in ln for ln in log)


@contextlib.contextmanager
def running_sshd(root: Path) -> Iterator[Sshd]:
    """sshd in the foreground on a free port of 127.0.0.1, logging in with the key
    ``root/client`` (``root/stranger`` is a key it does not know); always reaped."""
    user = getpass.getuser()
    host_key = keygen(root / "host_key")
    (root / "authorized_keys").write_text(keygen(root / "client") + "\n")
    keygen(root / "stranger")
    keygen(root / "other_host_key")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
    for _ in range(5):
        port = _free_port()
        proc, log, ok = _start(root, user, port)
        if ok:
            break
        proc.kill()
        proc.wait(10)
        _close(proc)
        if not any("Address already in use" in ln for ln in log):
            raise RuntimeError("sshd did not start:\n" + "".join(log))
    else:
        raise RuntimeError("sshd found no free port in 5 tries")
    server = Sshd(root, port, user, " ".join(host_key.split()[:2]), proc, log)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _close(proc)


def _close(proc: subprocess.Popen[str]) -> None:
    """Let the log reader see EOF, then close the pipe (no unclosed file left behind)."""
    reader = getattr(proc, "reader", None)
    if reader is not None:
        reader.join(10)
    if proc.stderr is not None:
        proc.stderr.close()
