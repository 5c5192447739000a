"""``prodbug inject PID``: load the agent into a running Python process that never imported it.

Before Python 3.14 there is no supported way in, so gdb attaches (ptrace) and calls
``PyGILState_Ensure`` / ``PyRun_SimpleString`` / ``PyGILState_Release`` in the process's main
thread while that thread waits in a system call. The code it runs is one line: start a
thread that imports ``prodbug.agent`` and calls ``start_agent()``, catching everything and
leaving a one-line report in a file for us. The agent then registers itself as any local
agent does, and we wait for its registry entry and a ping. See docs/inject.md.

gdb 13 cannot restore the extended (AVX-512/AMX) register state on some kernels
("Couldn't write extended state status"), and a ``call`` that fails that way leaves the
target broken; on x86-64 the calls are therefore made by hand with general registers only
(saved, pointed at the function with ``_start`` as its return address, restored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError, ProdbugError, TargetUnreachable

__all__ = ["configure_parser", "main"]

_MIN_VERSION = (3, 10)
_CAP_SYS_PTRACE = 19
_AT_ENTRY = 9
#: A report is a few hundred bytes; a bigger file is not ours.
_MAX_REPORT = 1 << 16
_BUSY_RETRY = 0.05


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``inject``'s options to its sub-parser (keep this light: no heavy imports)."""
    parser.add_argument("pid", type=int, metavar="PID")
    parser.add_argument("--service", metavar="NAME", help="the service this process belongs "
                        "to (the agent's PRODBUG_SERVICE)")
    parser.add_argument("--path", metavar="DIR", action="append", default=[],
                        help="put DIR first on the process's sys.path before importing prodbug "
                        "(a 'pip install --target DIR prodbug' made with the process's Python "
                        "version); may be repeated")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                        help="how long to wait for gdb to attach and for the agent to answer "
                        "(default: %(default)s); a call already running in the process is "
                        "always waited for")
    parser.add_argument("--gdb", default="gdb", metavar="PATH", help="the gdb to use "
                        "(default: gdb on PATH)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    """Inject the agent; returns an exit code."""
    started = time.monotonic()
    deadline = started + args.timeout
    target = examine(args.pid)
    running = _running_agent(args.pid, max(1.0, min(args.timeout, 5.0)))
    if running is not None:
        return _say(args, target, running, started, already=True, method=None)
    overrides: dict[str, Any] = {"listen": None}  # local ipc only, whatever its environment
    if args.service:
        from prodbug.config import AgentConfig

        AgentConfig.load(environ={}, service=args.service)  # a bad name fails here, not there
        overrides["service"] = args.service
    with _workdirs(target) as (private, shared):
        result = shared / "result.json" if shared is not None else None
        snippet = _snippet(_payload(result, args.path, overrides))
        method = "remote_exec" if _remote_exec(target, snippet, shared) else "gdb"
        if method == "gdb":
            _gdb_inject(target, snippet, private, deadline, args.gdb)
        report = _await_report(target, result, deadline)
        entry = _await_agent(target, report, deadline)
    return _say(args, target, entry, started, already=False, method=method)


# -- what we know about the process before touching it ---------------------------------------

@dataclass(frozen=True)
class Target:
    """A process we may inject into, as /proc describes it."""

    pid: int
    uid: int
    gid: int
    exe: str
    version: tuple[int, int]


def examine(pid: int) -> Target:
    """Check that ``pid`` is a live CPython 3.10+ process we may trace; one clear error if not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except FileNotFoundError:
        raise TargetUnreachable(f"no process {pid} on this host") from None
    except OSError as exc:
        raise TargetUnreachable(f"cannot read /proc/{pid}: {exc.strerror}") from None
    state = stat.rpartition(")")[2].split()[0]
    uid, gid = int(status["Uid"].split()[1]), int(status["Gid"].split()[1])
    if state in ("Z", "X"):
        raise TargetUnreachable(f"process {pid} has exited (a zombie its parent has not reaped "
                                f"yet): there is nothing to inject into")
    tracer = int(status.get("TracerPid", "0").strip() or 0)
    if tracer:
        raise ConfigError(f"process {pid} is already traced by process {tracer} "
                          f"({_comm(tracer)}): detach that debugger first")
    if state in ("T", "t"):
        raise ConfigError(f"process {pid} is stopped: resume it first (kill -CONT {pid})")
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except PermissionError:
        raise ConfigError(_ptrace_refused(pid, uid)) from None
    except OSError:
        raise ConfigError(f"process {pid} ({_comm(pid)}) is not a Python process "
                          f"(it has no executable)") from None
    version = _python_version(exe, maps)
    if version is None:
        kind = "a PyPy process" if "pypy" in exe.lower() or "libpypy" in maps else (
            "not a Python process")
        raise ConfigError(f"process {pid} ({exe}) is {kind}: prodbug inject needs CPython "
                          f"{_MIN_VERSION[0]}.{_MIN_VERSION[1]}+ (no python3.X binary or "
                          f"libpython3.X in its memory map)")
    if version < _MIN_VERSION:
        raise ConfigError(f"process {pid} runs Python {version[0]}.{version[1]}; prodbug "
                          f"supports {_MIN_VERSION[0]}.{_MIN_VERSION[1]} and later")
    return Target(pid, uid, gid, exe, version)


def _python_version(exe: str, maps: str) -> tuple[int, int] | None:
    """The CPython version named by the binary, libpython or extension modules in memory."""
    match = re.fullmatch(r"python(\d)\.(\d+)t?(?: \(deleted\))?", os.path.basename(exe))
    if match is None:
        match = re.search(r"/libpython(\d)\.(\d+)t?\.so", maps)
    if match is None:  # e.g. a binary called "python3" with libpython linked in
        match = re.search(r"\.cpython-(\d)(\d+)t?-", maps)
    return (int(match[1]), int(match[2])) if match is not None else None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _ptrace_refused(pid: int, uid: int) -> str:
    me = os.geteuid()
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as f:
            scope: str | None = f.read().strip()
    except OSError:
        scope = None
    rule = {
        None: "attaching needs the same uid or CAP_SYS_PTRACE",
        "0": "kernel.yama.ptrace_scope is 0: attaching needs the same uid or CAP_SYS_PTRACE",
        "1": "kernel.yama.ptrace_scope is 1: only a parent process, or CAP_SYS_PTRACE, may "
             "attach (sysctl kernel.yama.ptrace_scope=0 lifts that for the same uid)",
        "2": "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may attach",
        "3": "kernel.yama.ptrace_scope is 3: no process may attach until the next reboot",
    }.get(scope, f"kernel.yama.ptrace_scope is {scope}")
    caps = "with" if _has_cap(_CAP_SYS_PTRACE) else "without"
    fix = ("give this root CAP_SYS_PTRACE back" if me == 0
           else f"run prodbug inject as root (sudo) or as uid {uid}")
    return (f"not allowed to trace process {pid} (uid {uid}) as uid {me} {caps} CAP_SYS_PTRACE; "
            f"{rule}. Fix: {fix}; in Kubernetes add SYS_PTRACE to the container's "
            f"securityContext.capabilities.add")


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _running_agent(pid: int, timeout: float) -> dict[str, Any] | None:
    """The registry entry of an agent already answering in ``pid``, if there is one."""
    from prodbug import registry

    try:
        entry = registry.find_entry(pid)
    except TargetUnreachable:
        return None
    _ping(entry, timeout, f"process {pid} already registered an agent ({entry['endpoint']}) "
          f"that does not answer within {timeout:g}s (a C call may hold the GIL); not "
          f"injecting a second one: try prodbug stacks --pid {pid} later")
    return entry


def _ping(entry: dict[str, Any], timeout: float, failure: str) -> None:
    from prodbug.client import Client

    try:
        with Client(str(entry["endpoint"]), timeout=timeout) as client:
            client.request("ping")
    except ProdbugError:
        raise TargetUnreachable(failure) from None


# -- what runs in the process ------------------------------------------------------------------

# Run by exec() in a thread of its own (``_thread``: no lock of threading's is taken while the
# process is stopped). Nothing may escape: an exception here would be printed on the host's
# stderr. The report is the only trace it leaves, and only in the file we chose.
_PAYLOAD = """
def _prodbug_inject(result, paths, overrides):
    import sys
    report = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        for directory in reversed(paths):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        import prodbug.agent
        agent = prodbug.agent.start_agent(**overrides)
        report["endpoint"] = agent.ipc_endpoint
    except BaseException as exc:
        report["error"] = type(exc).__name__ + ": " + str(exc)
        report["missing"] = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if result:
        import json, os
        data = json.dumps(report).encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(result + ".tmp", flags, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(result + ".tmp", result)


try:
    _prodbug_inject(*_ARGS)
except BaseException:
    pass
"""


def _payload(result: Path | None, paths: list[str], overrides: dict[str, Any]) -> bytes:
    args = (os.fspath(result) if result is not None else None,
            [os.path.abspath(p) for p in paths], overrides)
    return f"_ARGS = {args!r}\n{_PAYLOAD}".encode()


def _snippet(payload: bytes) -> str:
    """The one statement run in the stopped main thread: it binds no name in ``__main__``.

    ``threading`` is imported here, in the main thread, if the process never imported it:
    before 3.13 its first importer becomes its idea of the main thread.
    """
    return ("try:\n"
            " __import__('threading')\n"
            f" __import__('_thread').start_new_thread(exec, (bytes.fromhex('{payload.hex()}'), "
            "{'__name__': '__prodbug_inject__'}))\n"
            "except BaseException:\n"
            " pass\n")


@contextlib.contextmanager
def _workdirs(target: Target) -> Iterator[tuple[Path, Path | None]]:
    """A private directory for gdb's script and log, and one the target may write its
    report to (None when we cannot give it one: another uid, and we are not root)."""
    private = Path(tempfile.mkdtemp(prefix="prodbug-inject-"))
    shared: Path | None = Path(tempfile.mkdtemp(prefix="prodbug-inject-"))
    try:
        if target.uid != os.geteuid() and shared is not None:
            try:
                os.chown(shared, target.uid, target.gid)
            except OSError:
                shutil.rmtree(shared, ignore_errors=True)
                shared = None
        yield private, shared
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


# -- getting in: sys.remote_exec (3.14+) or gdb -------------------------------------------------

def _remote_exec(target: Target, snippet: str, shared: Path | None) -> bool:
    """Python 3.14+: let the interpreter run the snippet at its next safe point. Only when
    our own Python is the target's version (the protocol reads the target's structures)."""
    remote_exec = getattr(sys, "remote_exec", None)
    if target.version < (3, 14) or remote_exec is None or shared is None or (
            sys.version_info[:2] != target.version):
        return False
    script = shared / "inject.py"
    # The directory is the target's uid's (it writes its report there): a link or file
    # it planted at this name must be neither followed nor handed over, so create anew.
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, snippet.encode("utf-8"))
        if target.uid != os.geteuid():
            os.fchown(fd, target.uid, target.gid)
    finally:
        os.close(fd)
    try:
        remote_exec(target.pid, os.fspath(script))
    except PermissionError:
        raise ConfigError(_ptrace_refused(target.pid, target.uid)) from None
    except (OSError, RuntimeError) as exc:
        raise TargetUnreachable(
            f"sys.remote_exec into process {target.pid} failed: {exc} (remote debugging may "
            f"be disabled in it: PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug)"
        ) from None
    return True


def _gdb_script(target: Target, code_file: Path, code_len: int) -> str:
    lines = ["set pagination off", "set confirm off", "set width 0", "set height 0",
             "set print thread-events off", "set print inferior-events off",
             # Signals the process receives meanwhile are its own business: pass them on.
             "handle all nostop noprint pass", "handle SIGINT nostop noprint pass",
             f"attach {target.pid}", "echo PRODBUG-ATTACHED\\n"]
    if platform.machine() not in ("x86_64", "AMD64"):
        # Elsewhere gdb's own calls, which save and restore every register themselves.
        text = code_file.read_bytes()[:-1].decode().replace("\n", "\\n")
        return "\n".join([*lines,
                          "set $pb_f = (unsigned long) &PyRun_SimpleString",
                          "echo PRODBUG-CALL\\n",
                          "set $pb_gil = (int) PyGILState_Ensure()",
                          f'set $pb_rc = (int) PyRun_SimpleString("{text}")',
                          "call (void) PyGILState_Release($pb_gil)",
                          'printf "PRODBUG-DONE %d\\n", $pb_rc', "detach", "quit", ""])
    entry = _entry_point(target.pid)
    regs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15", "eflags"]
    lines += [
        # Only where the main thread waits in a system call: there no vector register it
        # needs is live (gdb 13 could not restore them) and it holds no allocator lock.
        "if $orig_rax < 0", "echo PRODBUG-BUSY\\n", "detach", "quit", "end",
        "set $pb_fe = (unsigned long) &PyGILState_Ensure",
        "set $pb_fr = (unsigned long) &PyRun_SimpleString",
        "set $pb_fl = (unsigned long) &PyGILState_Release",
        *(f"set $pb_{r} = ${r}" for r in regs), "set $pb_rip = $rip",
        "set $pb_orig = $orig_rax",
        # The code goes below the red zone, the calls' stack below it; our ``_start`` is the
        # return address, a breakpoint there tells us the call returned.
        f"set $pb_code = ((unsigned long) $pb_rsp - 2048 - {code_len}) & -16",
        f"restore {code_file} binary $pb_code",
        "echo PRODBUG-CALL\\n",
    ]
    for func, arg, out in (("$pb_fe", "0", "$pb_gil"), ("$pb_fr", "$pb_code", "$pb_rc"),
                           ("$pb_fl", "$pb_gil", "$pb_void")):
        lines += ["set $rsp = $pb_code - 8", f"set *(unsigned long *) $rsp = {entry:#x}",
                  f"set $rdi = {arg}", "set $rax = 0", f"set $rip = {func}",
                  "set $orig_rax = -1",  # not a system call to restart any more
                  f"tbreak *{entry:#x}", "continue",
                  f"while $pc != {entry:#x}", "continue", "end",
                  f"set {out} = (int) $rax"]
    lines += [*(f"set ${r} = $pb_{r}" for r in regs), "set $rip = $pb_rip",
              "set $orig_rax = $pb_orig",  # last: writing $rip resets it
              'printf "PRODBUG-DONE %d\\n", $pb_rc', "detach", "quit", ""]
    return "\n".join(lines)


def _entry_point(pid: int) -> int:
    """The program's entry (``_start``): never run again, so a fine return address."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read()
    for i in range(0, len(data) - 15, 16):
        key, value = int.from_bytes(data[i:i + 8], "little"), data[i + 8:i + 16]
        if key == _AT_ENTRY:
            return int.from_bytes(value, "little")
    raise ConfigError(f"process {pid}: no entry point in /proc/{pid}/auxv")


def _gdb_inject(target: Target, snippet: str, private: Path, deadline: float,
                gdb_name: str) -> None:
    """Run gdb until the snippet ran. gdb is killed only while it has not begun the calls:
    killed inside them, it would leave the process with a broken stack."""
    gdb = shutil.which(gdb_name)
    if gdb is None:
        raise ConfigError(f"gdb is not installed (needed to inject before Python 3.14): install "
                          f"it, e.g. apt-get install gdb, dnf install gdb or apk add gdb"
                          f"{'' if gdb_name == 'gdb' else f' (looked for {gdb_name})'}")
    code = snippet.encode() + b"\0"
    code_file = private / "code"
    code_file.write_bytes(code)
    script = private / "inject.gdb"
    script.write_text(_gdb_script(target, code_file, len(code)), encoding="utf-8")
    busy = TargetUnreachable(
        f"the main thread of process {target.pid} never waited in a system call within the "
        f"timeout (it runs Python or C code non-stop): inject needs it to pause at least "
        f"briefly (I/O, sleep, a lock); nothing was run in it")
    attempts = 0
    while True:
        attempts += 1
        try:
            log = _run_gdb(gdb, script, private / "gdb.log", target, deadline)
        except TargetUnreachable:
            if attempts > 1:  # the earlier ones found it busy
                raise busy from None
            raise
        if "PRODBUG-BUSY" not in log:
            break
        if time.monotonic() + _BUSY_RETRY >= deadline:
            raise busy
        time.sleep(_BUSY_RETRY)
    if "PRODBUG-DONE" in log:
        rc = log.split("PRODBUG-DONE", 1)[1].split()[0]
        if rc != "0":
            raise TargetUnreachable(f"process {target.pid} could not run the injection "
                                    f"(PyRun_SimpleString returned {rc})")
        return
    raise _gdb_failure(target, log)


def _gdb_failure(target: Target, log: str) -> ProdbugError:
    pid = target.pid
    if "ptrace: Operation not permitted" in log:
        return ConfigError(_ptrace_refused(pid, target.uid))
    if "ptrace: No such process" in log or "The program no longer exists" in log or (
            "exited" in log and "PRODBUG-CALL" not in log):
        return TargetUnreachable(f"process {pid} exited while gdb attached to it")
    if "No symbol" in log and "PRODBUG-CALL" not in log:
        return ConfigError(f"process {pid} ({target.exe}) does not export the CPython C API "
                           f"(PyGILState_Ensure, PyRun_SimpleString): not a CPython process, or "
                           f"an embedding we cannot inject into")
    lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("PRODBUG-")]
    where = ("inside its calls: check the process" if "PRODBUG-CALL" in log
             else "before touching the process")
    return TargetUnreachable(f"gdb failed {where} {pid}: {lines[-1] if lines else 'no output'}")


def _run_gdb(gdb: str, script: Path, log_path: Path, target: Target, deadline: float) -> str:
    """One gdb run; returns its output. Its output goes to a file, not a pipe: if we die,
    a pipe's SIGPIPE would kill gdb in the middle of a call."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            # -readnever: the ELF symbols are enough, and reading libpython's debug
            # information would keep the process stopped for about half a second more.
            [gdb, "-nx", "-batch", "-q", "-readnever", "-iex", "set debuginfod enabled off",
             "-iex", "set auto-load off", "-iex", "set auto-load libthread-db off",
             "-x", os.fspath(script)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C at our terminal must not reach gdb
        )
    told = False
    try:
        while proc.poll() is None:
            if not told and time.monotonic() >= deadline:
                _stop_before_call(proc, log_path, target)  # raises unless inside the calls
                told = True
                if proc.poll() is None:
                    print(f"prodbug inject: gdb is inside process {target.pid} (waiting for "
                          f"the GIL or for the call to return); waiting for it, since killing "
                          f"it now could crash the process", file=sys.stderr, flush=True)
            time.sleep(0.01)
    except KeyboardInterrupt:
        if "PRODBUG-CALL" in log_path.read_text(errors="replace"):
            print(f"prodbug inject: gdb (pid {proc.pid}) is still inside process "
                  f"{target.pid}; left to finish on its own", file=sys.stderr)
            raise
        _stop_before_call(proc, log_path, target)
        raise
    return log_path.read_text(errors="replace")


def _stop_before_call(proc: subprocess.Popen[bytes], log_path: Path, target: Target) -> None:
    """Kill gdb and raise if it has not begun the calls; else let it go on.

    gdb is stopped first, so that what its log says is final: it writes the marker (``echo``
    flushes) before it changes anything in the process.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    for _ in range(200):
        if proc.poll() is not None or _state(proc.pid) in ("T", "t", "Z", "?"):
            break
        time.sleep(0.005)
    if "PRODBUG-CALL" in log_path.read_text(errors="replace"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its session: gdb and anything it started
    proc.wait()
    # gdb's own SIGSTOPs can outlive it and leave the process stopped.
    if _state(target.pid) == "T":
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, signal.SIGCONT)
    raise TargetUnreachable(f"gdb did not get into process {target.pid} within the timeout "
                            f"(attaching or reading its symbols took too long); nothing was "
                            f"run in it: try a longer --timeout")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


# -- confirming --------------------------------------------------------------------------------

def _await_report(target: Target, result: Path | None, deadline: float) -> dict[str, Any]:
    """The injected thread's report ({} when it cannot write one, or not in time)."""
    if result is None:
        return {}
    while True:
        report = _read_report(result)
        if report is not None:
            break
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.02)
    error = report.get("error")
    if not error:
        return report
    python = f"{report.get('executable') or target.exe} ({report.get('python', '?')})"
    if report.get("missing"):
        version = f"{target.version[0]}.{target.version[1]}"
        raise ConfigError(
            f"process {target.pid} cannot import prodbug: {error} (its Python: {python}). "
            f"Install prodbug into that environment ({report.get('executable') or 'python'} "
            f"-m pip install prodbug), or pass --path DIR, a directory made with "
            f"python{version} -m pip install --target DIR prodbug")
    raise ConfigError(f"the agent did not start in process {target.pid}: {error}")


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MAX_REPORT + 1)
    try:
        report = json.loads(data) if len(data) <= _MAX_REPORT else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        return {"error": "its report is unreadable"}
    return report


def _await_agent(target: Target, report: dict[str, Any], deadline: float) -> dict[str, Any]:
    from prodbug import registry

    while True:
        try:
            entry = registry.find_entry(target.pid)
            break
        except TargetUnreachable as exc:
            if time.monotonic() >= deadline:
                if report.get("endpoint"):
                    raise TargetUnreachable(
                        f"the agent started in process {target.pid} at {report['endpoint']}, "
                        f"but this user cannot find it in the registry ({exc}); set "
                        f"PRODBUG_RUNTIME_DIR to that socket's directory") from None
                raise TargetUnreachable(
                    f"no agent appeared in process {target.pid} within the timeout; the "
                    f"injected thread left no report (is it still importing?): try "
                    f"prodbug stacks --pid {target.pid} in a moment") from None
            time.sleep(0.02)
    _ping(entry, max(0.5, deadline - time.monotonic()),
          f"the agent registered in process {target.pid} but does not answer")
    return entry


def _say(args: argparse.Namespace, target: Target, entry: dict[str, Any], started: float,
         *, already: bool, method: str | None) -> int:
    seconds = round(time.monotonic() - started, 3)
    if args.json:
        print(json.dumps({"pid": target.pid, "already_running": already, "method": method,
                          "python": f"{target.version[0]}.{target.version[1]}",
                          "endpoint": entry["endpoint"], "seconds": seconds}))
        return 0
    from prodbug.textsafe import printable

    what = ("already runs a prodbug agent; nothing injected" if already
            else f"now runs the prodbug agent ({method}, {seconds:.2f}s)")
    print(f"process {target.pid} (Python {target.version[0]}.{target.version[1]}) {what}: "
          f"{printable(str(entry['endpoint']))}; see prodbug stacks --pid {target.pid}")
    return 0
