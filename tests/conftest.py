"""Fixtures: real keys, real target processes, the real CLI. Every process is reaped."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect
import psutil
import pytest

from prodbug.keys import write_certificate_pair

TARGETS = Path(__file__).parent / "targets"
READY_TIMEOUT = 30.0


@dataclass
class Keys:
    root: Path
    server_public: Path
    server_secret: Path
    authorized: Path
    observer: Path  # secret certificate of an observer-role client
    debugger: Path
    stranger: Path  # a valid key that nobody authorized


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "heartbeat(seconds): the session heartbeat of the `service` fixture's "
        "target, for tests about an operator who is gone (default 10 s: a test's CLI starved "
        "of CPU on a loaded machine must not lose its session)")


@pytest.fixture(autouse=True)
def _no_prodbug_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents started inside the test process read ``os.environ``: never the developer's
    own ``PRODBUG_*`` settings."""
    for name in [name for name in os.environ if name.startswith("PRODBUG_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    server_public, server_secret = write_certificate_pair(root / "server", "server")
    authorized = root / "authorized"
    clients = root / "clients"
    secrets = {}
    for name, role in (("alice", "observer"), ("bob", "debugger"), ("mallory", "observer")):
        public, secret = write_certificate_pair(clients, name, role)
        if name != "mallory":
            authorized.mkdir(exist_ok=True)
            shutil.copy(public, authorized / public.name)
        secrets[name] = secret
    return Keys(root, server_public, server_secret, authorized,
                secrets["alice"], secrets["bob"], secrets["mallory"])


@contextlib.contextmanager
def short_tmp(prefix: str, mode: int) -> Iterator[Path]:
    """A fresh directory directly in /tmp (not tmp_path: unix socket paths must stay
    short, about 107 bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    with short_tmp("pbt-", 0o700) as path:
        yield path


@pytest.fixture
def base_env(runtime_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
    env["PRODBUG_RUNTIME_DIR"] = str(runtime_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NO_COLOR", None)
    return env


@pytest.fixture
def agent_env(base_env: dict[str, str], keys: Keys) -> dict[str, str]:
    """Environment for a target whose agent listens on CURVE TCP on a free port."""
    return {
        **base_env,
        "PRODBUG_LISTEN": "tcp://127.0.0.1:0",
        "PRODBUG_SERVER_SECRET_KEY": str(keys.server_secret),
        "PRODBUG_AUTHORIZED_KEYS": str(keys.authorized),
    }


@dataclass
class Target:
    proc: subprocess.Popen[str]
    facts: dict[str, Any]
    output: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return int(self.facts["pid"])

    @property
    def tcp(self) -> str:
        return str(self.facts["tcp"])

    @property
    def host_port(self) -> str:
        return self.tcp.removeprefix("tcp://")


def stop_target(target: Target) -> int | None:
    """Close its stdin (targets exit on EOF), kill it if that is not enough, reap it."""
    proc = target.proc
    code = None
    if proc.stdin is not None and not proc.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if target.pump is not None:
        target.pump.join(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def _pump(stream: Any, sink: list[str], ready: threading.Event) -> None:
    for line in stream:
        sink.append(line)
        if line.startswith("READY "):
            ready.set()
    ready.set()  # EOF: the process died before it was ready


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Iterator[Callable[..., Target]]:
    """Start ``tests/targets/NAME.py ARGS`` and wait for its READY line."""
    started: list[Target] = []

    def start(name: str, *args: str, env: dict[str, str]) -> Target:
        proc = subprocess.Popen(
            [sys.executable, str(TARGETS / f"{name}.py"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env,
        )
        target = Target(proc, {})
        started.append(target)
        ready = threading.Event()
        target.pump = threading.Thread(target=_pump, args=(proc.stdout, target.output, ready),
                                       daemon=True)
        target.pump.start()
        if not ready.wait(READY_TIMEOUT) or not any(
                ln.startswith("READY ") for ln in target.output):
            raise RuntimeError(f"target {name} not ready:\n{''.join(target.output)}")
        line = next(ln for ln in target.output if ln.startswith("READY "))
        target.facts = json.loads(line[len("READY "):])
        return target

    yield start
    failed = getattr(request.node, "rep_call", None)
    for target in started:
        stop_target(target)
        if failed is not None and failed.failed:
            sys.stderr.write(f"--- output of pid {target.proc.pid}:\n{''.join(target.output)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def run_cli(*args: str, env: dict[str, str],
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``prodbug`` command line."""
    return subprocess.run([sys.executable, "-m", "prodbug", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range: a port a test
    frees and binds again (a door's takeover, a squatter) must not be handed meanwhile
    to some other test's outgoing connection, as a port from bind(0) can be."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped. One thread takes
    the signal and the others stop when it runs: on a loaded host that can be milliseconds
    later, time enough for another thread (the agent's) to act on something."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                stat = (task / "stat").read_text()
                if stat[stat.rindex(")") + 2] not in "Tt":
                    return False
        except FileNotFoundError:  # a thread (or the process) gone meanwhile: look again
            return not Path(f"/proc/{pid}").exists()
        return True

    assert wait_for(stopped, 10), f"process {pid} did not stop"


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def service(spawn: Callable[..., Target], base_env: dict[str, str], tmp_path: Path,
            request: pytest.FixtureRequest) -> Target:
    """tests/targets/service.py: a worker counting into a file, and an HTTP server."""
    marker = request.node.get_closest_marker("heartbeat")
    env = {**base_env, "COUNTER_FILE": str(tmp_path / "counter"),
           "PRODBUG_SESSION_HEARTBEAT": str(marker.args[0] if marker else 10)}
    target = spawn("service", env=env)
    target.facts["counter"] = str(tmp_path / "counter")
    return target


def count(target: Target) -> int:
    """The service's worker counter, as last written."""
    try:
        return int(Path(target.facts["counter"]).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def still_counting(target: Target) -> bool:
    """Whether the service's worker keeps counting (waits up to 30 s for a step)."""
    start = count(target)
    return wait_for(lambda: count(target) > start, timeout=30)


class Request(threading.Thread):
    """One HTTP request in the background; ``result`` is (status, body) or the error."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.result: Any = None

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=120) as response:
                self.result = (response.status, response.read().decode())
        except Exception as exc:
            self.result = exc




# -- a second local user, for the attacks that local users can make ---------------------------

@dataclass(frozen=True)
class OtherUser:
    """A second uid on this host, with a Python it can run (stdlib only: no prodbug code)."""

    name: str
    uid: int
    gid: int
    python: str


def _usable_python(user: OtherUser) -> bool:
    try:
        return subprocess.run([user.python, "-c", "pass"], user=user.uid, group=user.gid,
                              extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    """Create (once) a system user ``prodbug-other``; skip, saying why, where that cannot be."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("acting as a second local user needs root (to create it and switch to it)")
    name = "prodbug-other"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                               "/usr/sbin/nologin", name], capture_output=True, text=True,
                              check=False)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            pytest.skip(f"cannot create a second local user: useradd said {made.stderr.strip()!r}")
    for python in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if python and os.path.exists(python):
            user = OtherUser(name, entry.pw_uid, entry.pw_gid, python)
            if _usable_python(user):
                return user
    pytest.skip(f"no Python that user {name} may run (pyenv's live under /root, mode 0700)")


@pytest.fixture
def as_other(other_user: OtherUser) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -c CODE ARGS...`` as the second user; every process is reaped."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([other_user.python, "-c", code, *args], user=other_user.uid,
                                group=other_user.gid, extra_groups=[], cwd="/",
                                env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.SubprocessError):
            proc.communicate(timeout=10)


# -- the interactive CLIs: prodbug vscode and prodbug pdb ---------------------------------

class VscodeCli:
    """``prodbug vscode`` running in the background, its stderr followed line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "prodbug", "vscode", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.err: list[str] = []
        self.out: list[str] = []
        for stream, sink in ((self.proc.stderr, self.err), (self.proc.stdout, self.out)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)

    def port(self) -> int:
        def ready() -> bool:
            return any("ready: attach VS Code" in line for line in self.err)
        assert wait_for(ready, timeout=90), "".join(self.err)
        line = next(line for line in self.err if "ready: attach VS Code" in line)
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match is not None
        return int(match[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def vscode(base_env: dict[str, str]) -> Iterator[type[VscodeCli]]:
    started: list[VscodeCli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> VscodeCli:
        cli = VscodeCli(env or base_env, *args)
        started.append(cli)
        return cli

    yield start  # type: ignore[misc]
    for cli in started:
        cli.stop()


@pytest.fixture
def cli(base_env: dict[str, str],
        request: pytest.FixtureRequest) -> Iterator[Callable[..., pexpect.spawn]]:
    started: list[pexpect.spawn] = []

    def start(*args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
        child = pexpect.spawn(sys.executable, ["-m", "prodbug", *args], env=env or base_env,
                              encoding="utf-8", timeout=60)
        child.logfile_read = io.StringIO()
        started.append(child)
        return child

    yield start
    failed = getattr(request.node, "rep_call", None)
    for child in started:
        if failed is not None and failed.failed:
            sys.stderr.write(f"--- terminal of {child.args}:\n{child.logfile_read.getvalue()}\n")
        if child.isalive():
            child.terminate(force=True)
        child.close()


# -- services started with prodbug run (gunicorn, uvicorn, ...) --------------------------------

BIN = Path(sys.executable).parent


class Service:
    """``prodbug run ... -- CMD`` in a session of its own; its output pumped."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.output: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop() after its wait
            for line in self.proc.stdout:
                self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def facts(self) -> dict[str, Any]:
        """The READY line's facts, once printed."""
        assert wait_for(lambda: any(ln.startswith("READY ") for ln in self.output), 30), \
            "".join(self.output)
        line = next(ln for ln in self.output if ln.startswith("READY "))
        return dict(json.loads(line[len("READY "):]))

    def stop(self) -> None:
        """End the whole process group (a gunicorn master and its workers), and reap."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:  # a descendant may have left the group (setsid): end it too
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers that outlived the leader
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(descendants, timeout=10)
        self.pump.join(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def run_service(request: pytest.FixtureRequest) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(*args: str, env: dict[str, str], cwd: Path | None = None) -> Service:
        proc = subprocess.Popen([sys.executable, "-m", "prodbug", "run", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                                start_new_session=True)
        service = Service(proc)
        started.append(service)
        return service

    yield start
    failed = getattr(request.node, "rep_call", None)
    for service in started:
        service.stop()
        if failed is not None and failed.failed:
            sys.stderr.write(f"--- output of {service.pid}:\n{''.join(service.output)}")


def children(pid: int) -> set[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return {p.pid for p in psutil.Process(pid).children()}
    return set()
