"""The per-user runtime directory where every local agent registers its ipc endpoint.

Each agent writes ``PID.json`` (what ``prodbug ps`` shows) beside its socket
``PID.sock``. File permissions guard the directory (0700, owned by the user),
so local commands need no keys, as manhole's uid check does.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError, TargetUnreachable

__all__ = [
    "MAX_IPC_PATH",
    "default_runtime_dir",
    "ensure_runtime_dir",
    "find_entry",
    "list_entries",
    "pid_alive",
    "remove_entry",
    "socket_path",
    "write_entry",
]

#: sun_path is 108 bytes on Linux, less elsewhere; stay well inside.
MAX_IPC_PATH = 100


def default_runtime_dir() -> Path:
    """``$PRODBUG_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/prodbug``, else ``TMP/prodbug-UID``."""
    explicit = os.environ.get("PRODBUG_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "prodbug"
    return Path(tempfile.gettempdir()) / f"prodbug-{os.getuid()}"


def ensure_runtime_dir(path: Path) -> Path:
    """Create the directory 0700, or refuse it when someone else owns it or can enter it.

    An existing directory is never chmod-ed: PRODBUG_RUNTIME_DIR=/tmp must not make /tmp
    private; it is refused instead.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise ConfigError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"runtime directory {path} is not a directory; remove it")
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"runtime directory {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}); set PRODBUG_RUNTIME_DIR to a directory of your own"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"runtime directory {path} is open to others (mode {mode:04o}); "
            f"fix it with: chmod 700 {path}, or set PRODBUG_RUNTIME_DIR to a private directory")
    return path


def socket_path(runtime_dir: Path, pid: int) -> Path:
    """Where agent ``pid`` binds its ipc socket; short on purpose (sun_path limit)."""
    path = runtime_dir / f"{pid}.sock"
    if len(os.fsencode(path)) > MAX_IPC_PATH:
        raise ConfigError(
            f"runtime directory {runtime_dir} is too long for a unix socket path "
            f"(limit about {MAX_IPC_PATH} bytes); set PRODBUG_RUNTIME_DIR to a shorter one"
        )
    return path


def write_entry(runtime_dir: Path, entry: dict[str, Any]) -> Path:
    """Atomically write ``PID.json`` (mode 0600)."""
    path = runtime_dir / f"{entry['pid']}.json"
    tmp = runtime_dir / f".{entry['pid']}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(entry, f)
    os.replace(tmp, path)
    return path


def remove_entry(runtime_dir: Path, pid: int) -> None:
    """Remove agent ``pid``'s registry file and socket, if present."""
    for name in (f"{pid}.json", f"{pid}.sock"):
        with contextlib.suppress(OSError):
            (runtime_dir / name).unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (permission errors mean it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
        return None
    return entry


def list_entries(runtime_dir: Path | None = None) -> Iterator[dict[str, Any]]:
    """Live agents registered in ``runtime_dir``, oldest pid first; prunes dead ones."""
    directory = runtime_dir or default_runtime_dir()
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json"), key=lambda p: p.stem.zfill(12)):
        entry = _read(path)
        if entry is None:
            continue
        if not pid_alive(entry["pid"]):
            remove_entry(directory, entry["pid"])
            continue
        yield entry


def _candidate_dirs() -> list[Path]:
    dirs = [default_runtime_dir()]
    # Root on the host, or kubectl exec as another user: look in every user's directory.
    dirs += [Path(p) for p in sorted(glob.glob("/run/user/*/prodbug"))]
    dirs += [Path(p) for p in sorted(glob.glob(os.path.join(tempfile.gettempdir(), "prodbug-*")))]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_entry(pid: int) -> dict[str, Any]:
    """The registry entry of the agent in process ``pid``, wherever its user keeps it."""
    if not pid_alive(pid):
        raise TargetUnreachable(f"no process {pid} on this host")
    for directory in _candidate_dirs():
        entry = _read(directory / f"{pid}.json")
        if entry is not None:
            return entry
    raise TargetUnreachable(
        f"process {pid} runs no prodbug agent that this user can see; start it with "
        f"prodbug.start_agent() or PRODBUG_* variables and 'import prodbug.autostart'"
    )
