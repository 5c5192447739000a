"""The per-user runtime directory where every local agent registers its ipc endpoint.

Each agent writes ``PID.json`` (what ``prodbug ps`` shows) beside its socket
``PID.sock``. File permissions guard the directory (0700, owned by the user),
so local commands need no keys, as manhole's uid check does. The CLI believes an entry
only where the process's own uid owns the directory, the file and the socket; a default
directory that someone else took first makes the agent use a private one instead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError, TargetUnreachable
from prodbug.textsafe import printable

__all__ = [
    "MAX_IPC_PATH",
    "default_runtime_dir",
    "describe_entry",
    "ensure_runtime_dir",
    "find_entry",
    "list_entries",
    "pid_alive",
    "process_uid",
    "remove_entry",
    "resolve_runtime_dir",
    "socket_path",
    "write_entry",
]

#: sun_path is 108 bytes on Linux, less elsewhere; stay well inside.
MAX_IPC_PATH = 100


#: The agent's own logger: a service's operators look there, and the CLI never logs.
_agent_log = logging.getLogger("prodbug.agent")


def default_runtime_dir() -> Path:
    """``$PRODBUG_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/prodbug``, else ``TMP/prodbug-UID``."""
    explicit = os.environ.get("PRODBUG_RUNTIME_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return _private_default()


def _private_default() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "prodbug"
    return Path(_tempdir()) / f"prodbug-{os.getuid()}"


def _tempdir() -> str:
    # tempfile (with shutil, random and compression modules behind it) only when the
    # environment names no runtime directory: the agent's host seldom needs it otherwise.
    import tempfile

    return tempfile.gettempdir()


_resolved: dict[tuple[int, Path], Path] = {}
_resolving = threading.Lock()


def resolve_runtime_dir(explicit: Path | None = None) -> Path:
    """Where this process's agent registers; the same answer for the process's lifetime.

    ``explicit`` (else ``$PRODBUG_RUNTIME_DIR``) is returned as it is: the agent's
    ``ensure_runtime_dir`` refuses it when it is unsafe, since someone chose it. The
    default directory is created if need be; when it is unusable (another user made it
    first in a shared temp dir, or made it a symlink or a file), waiting for them to
    remove it would let any local user keep every agent of ours from starting: the agent
    uses a private directory of ours instead (``TMP/prodbug-UID-XXXXXXXX``, 0700, short
    enough for a socket path), which ``ps`` and ``--pid`` search too, and says so once
    on the ``prodbug.agent`` logger.
    """
    if explicit is None:
        env = os.environ.get("PRODBUG_RUNTIME_DIR")
        explicit = Path(env).expanduser() if env else None
    if explicit is not None:
        return explicit
    default = _private_default()
    key = (os.getpid(), default)  # a forked child decides again, but finds the same place
    with _resolving:
        chosen = _resolved.get(key)
        if chosen is None or _dir_problem(chosen, os.getuid(), "") is not None:
            try:
                chosen = ensure_runtime_dir(default)
            except ConfigError as exc:
                chosen = _fallback(exc)
            _resolved[key] = chosen
        return chosen


def _fallback(why: ConfigError) -> Path:
    uid = os.getuid()
    # Every agent of ours that met the same obstacle shares one fallback, so that the
    # temp dir does not fill with them and ``ps`` has few places to look.
    for directory in _own_fallbacks(uid):
        if _dir_problem(directory, uid, "") is None:
            chosen = directory
            break
    else:
        try:
            import tempfile

            chosen = Path(tempfile.mkdtemp(prefix=f"prodbug-{uid}-"))
        except OSError as exc:
            raise ConfigError(f"{why}; no private directory could be made in its place "
                              f"either: {exc.strerror}") from None
    _agent_log.warning("%s; using the private directory %s instead", why, chosen)
    return chosen


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
    """Whether a process with this pid exists and has not exited (permission errors mean
    it exists). A zombie has exited: it will never answer, and a parent that is slow to
    reap it (or stopped) must not make ``--all`` wait out its timeout for it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read(512).rpartition(b")")[2][1:2]
    except OSError:
        return True  # no procfs (or gone this instant): the signal's answer stands
    return state not in (b"Z", b"X")


def process_uid(pid: int) -> int | None:
    """The effective uid process ``pid`` runs as, or None where /proc cannot tell.

    Read from ``/proc/PID/status`` rather than the owner of ``/proc/PID``: a service that
    dropped root with setuid() (gunicorn ``--user``) is no longer dumpable, and its /proc
    directory then belongs to root although its files are created as the new uid.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# -- trust: whose files may tell the CLI where to connect -------------------------------------
#
# Anyone may create TMP/prodbug-SOMETHING, and a forged PID.json would send root's
# ``stacks --pid`` (and what root types into ``pdb --pid``) to an agent of the forger's.
# An entry is believed only when its directory, its file and its socket all belong to the
# uid that the process runs as (for ``ps``, to us) and nobody else may change them.

_MISSING = "missing"
#: A registry entry is a few hundred bytes; a bigger file is not one of ours.
_MAX_ENTRY = 1 << 20


def _show(path: Path | str) -> str:
    """A path for a message: names in a shared temp dir are chosen by anyone."""
    return printable(os.fspath(path))


def _dir_problem(directory: Path, uid: int, whose: str) -> str | None:
    """Why ``directory`` cannot be trusted as ``uid``'s runtime directory; None if it can."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, but {whose}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"open to others (mode {mode:04o})"
    return None


def _same_place(claimed: str, expected: Path) -> bool:
    """Whether ``claimed`` names ``expected``: the same name in the very same directory."""
    if claimed == os.fspath(expected):
        return True
    path = Path(claimed)
    if path.name != expected.name:
        return False
    try:
        return os.path.samestat(os.stat(path.parent), os.stat(expected.parent))
    except OSError:
        return False


def _load(directory: Path, pid: int, uid: int, whose: str) -> tuple[dict[str, Any] | None,
                                                                     str | None]:
    """``directory/PID.json`` if it and its socket are ``uid``'s; else (None, why) or, when
    there is no such file, (None, None). ``directory`` must already be trusted."""
    path = directory / f"{pid}.json"
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"ignoring {_show(path)}: it is a symlink"
        return None, f"ignoring {_show(path)}: {exc.strerror}"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, f"ignoring {_show(path)}: not a regular file"
        if st.st_uid != uid:
            return None, f"ignoring {_show(path)}: owned by uid {st.st_uid}, but {whose}"
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            return None, f"ignoring {_show(path)}: writable by others (mode {mode:04o})"
        data = f.read(_MAX_ENTRY + 1)
    try:
        entry = json.loads(data) if len(data) <= _MAX_ENTRY else None
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or entry.get("pid") != pid or isinstance(entry["pid"], bool):
        return None, f"ignoring {_show(path)}: not a registry entry for pid {pid}"
    sock = directory / f"{pid}.sock"
    endpoint = entry.get("endpoint")
    if not (isinstance(endpoint, str) and endpoint.startswith("ipc://")
            and _same_place(endpoint[len("ipc://"):], sock)):
        return None, (f"ignoring {_show(path)}: its endpoint {_show(str(endpoint))} is not "
                      f"the socket beside it ({_show(sock)})")
    try:
        sock_st = os.lstat(sock)
    except OSError:
        return None, f"ignoring {_show(path)}: no socket {_show(sock)}"
    if not stat.S_ISSOCK(sock_st.st_mode) or sock_st.st_uid != uid:
        return None, (f"ignoring {_show(path)}: {_show(sock)} is not a socket of uid {uid}")
    dump = entry.get("dump_file")
    if dump is not None:
        expected_dump = directory / f"{pid}.dump"
        if not (isinstance(dump, str) and _same_place(dump, expected_dump)):
            return None, (f"ignoring {_show(path)}: its dump file {_show(str(dump))} is not "
                          f"{_show(expected_dump)}")
        entry["dump_file"] = os.fspath(expected_dump)
    # What we checked, not what the file says: the CLI connects to this path and no other.
    entry["endpoint"] = f"ipc://{sock}"
    return entry, None


def _own_fallbacks(uid: int) -> list[Path]:
    """Private directories made by ``resolve_runtime_dir`` when the default was taken."""
    import glob

    pattern = os.path.join(glob.escape(_tempdir()), f"prodbug-{uid}-*")
    return [Path(p) for p in sorted(glob.glob(pattern))]


def list_entries(runtime_dir: Path | None = None,
                 notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Our live agents, oldest pid first; prunes dead ones.

    Looks in ``runtime_dir``, else ``$PRODBUG_RUNTIME_DIR``, else the default directory
    and our private fallbacks; believes only what belongs to us (see ``find_entry``).
    Why anything was ignored is appended to ``notes``, one line each.
    """
    uid = os.getuid()
    whose = f"you are uid {uid}"
    explicit = os.environ.get("PRODBUG_RUNTIME_DIR")
    if runtime_dir is not None:
        dirs = [runtime_dir]
    elif explicit:
        dirs = [Path(explicit).expanduser()]
    else:
        dirs = [_private_default(), *_own_fallbacks(uid)]
    found: dict[int, dict[str, Any]] = {}
    for directory in dirs:
        problem = _dir_problem(directory, uid, whose)
        if problem is not None:
            if problem != _MISSING and notes is not None:
                notes.append(f"ignoring {_show(directory)}: {problem}")
            continue
        for path in directory.glob("*.json"):
            if not path.stem.isdigit() or int(path.stem) in found:
                continue
            pid = int(path.stem)
            entry, reason = _load(directory, pid, uid, whose)
            if entry is None:
                if reason is not None and notes is not None:
                    notes.append(reason)
                continue
            alive = pid_alive(pid)
            owner = process_uid(pid) if alive else None
            if not alive or (owner is not None and owner != uid):
                remove_entry(directory, pid)  # dead, or its pid now belongs to someone else
                continue
            found[pid] = entry
    yield from (found[pid] for pid in sorted(found))


def _candidate_dirs() -> list[Path]:
    import glob

    dirs = [default_runtime_dir()]
    # Root on the host, or kubectl exec as another user: look in every user's directory
    # (fallbacks included); trust is decided per directory by its owner, not by its name.
    dirs += [Path(p) for p in sorted(glob.glob("/run/user/*/prodbug"))]
    temp = glob.escape(_tempdir())
    dirs += [Path(p) for p in sorted(glob.glob(os.path.join(temp, "prodbug-*")))]
    return list(dict.fromkeys(dirs))


def find_entry(pid: int, notes: list[str] | None = None) -> dict[str, Any]:
    """The registry entry of the agent in process ``pid``, wherever its user keeps it.

    Believed only from a real directory (not a symlink) owned by the uid the process runs
    as and closed to others, holding a regular ``PID.json`` of that uid that nobody else
    may write, whose endpoint is the ``PID.sock`` beside it, a socket of that uid. Entries
    ignored on the way are explained in ``notes`` (and in the error when none is left).
    """
    if not pid_alive(pid):
        raise TargetUnreachable(f"no process {pid} on this host")
    uid = process_uid(pid)
    if uid is None:  # no /proc: only our own processes can be vouched for
        uid = os.getuid()
    whose = f"process {pid} runs as uid {uid}"
    refused: list[str] = []
    for directory in _candidate_dirs():
        problem = _dir_problem(directory, uid, whose)
        if problem is not None:
            if problem != _MISSING and os.path.lexists(directory / f"{pid}.json"):
                refused.append(f"ignoring {_show(directory)}: {problem}")
            continue
        entry, reason = _load(directory, pid, uid, whose)
        if reason is not None:
            refused.append(reason)
        if entry is not None:
            if notes is not None:
                notes.extend(refused)
            return entry
    if refused:
        raise TargetUnreachable(
            f"process {pid}: no trusted registry entry ({'; '.join(refused)}); an entry "
            f"counts only in a 0700 directory of uid {uid}, the process's own")
    raise TargetUnreachable(
        f"process {pid} runs no prodbug agent that this user can see; start it with "
        f"prodbug.start_agent() or PRODBUG_* variables and 'import prodbug.autostart'"
    )


def describe_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``prodbug ps`` shows of one process: its registry entry and what the system
    says of it now (CPU is the average since it started; each figure None if unknown)."""
    import psutil  # only here: the CLI's other commands do not pay for it

    pid = int(entry["pid"])
    facts: dict[str, Any] = {"cpu_percent": None, "rss_bytes": None, "threads": None}
    with contextlib.suppress(psutil.Error, OSError):
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            started = proc.create_time()
            facts["rss_bytes"] = proc.memory_info().rss
            facts["threads"] = proc.num_threads()
        alive_for = max(time.time() - started, 1e-3)
        facts["cpu_percent"] = round(100.0 * (times.user + times.system) / alive_for, 1)
    started_at = entry.get("started_at")
    uptime = round(max(time.time() - float(started_at), 0.0), 1) \
        if isinstance(started_at, (int, float)) else None
    return {"role": "local", "service": None, "ppid": None, "sessions": 0, **entry, **facts,
            "uptime_s": uptime}
