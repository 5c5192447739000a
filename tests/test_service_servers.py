"""Real servers started with ``prodbug run --listen``: every worker through the one port.

gunicorn (forked sync workers, ``kill -HUP`` reloads) and uvicorn (spawned workers): the
master's agent holds the port; each worker's agent finds it taken by its service and
joins as a member.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest
from conftest import BIN, TARGETS, Keys, Request, Service, children, free_port, run_cli, wait_for

BREAK_LINE = next(n for n, text in enumerate(
    (TARGETS / "service_app.py").read_text().splitlines(), 1) if "# BREAK" in text)



class Door:
    """The CLI against the service's one port, with a key."""

    def __init__(self, port: int, base_env: dict[str, str], keys: Keys) -> None:
        self.address = f"127.0.0.1:{port}"
        self.base_env, self.keys = base_env, keys

    def env(self, key: Path) -> dict[str, str]:
        return {**self.base_env, "PRODBUG_CLIENT_SECRET_KEY": str(key),
                "PRODBUG_SERVER_KEY": str(self.keys.server_public)}

    def json(self, *args: str, key: Path | None = None) -> dict[str, Any]:
        done = run_cli(*args[:1], self.address, *args[1:], "--json",
                       env=self.env(key or self.keys.observer))
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def members(self) -> dict[int, str]:
        try:
            return {a["pid"]: a["role"] for a in self.json("ps")["agents"]}
        except AssertionError:  # not listening yet
            return {}

    def stacks_all(self) -> dict[str, Any]:
        return self.json("stacks", "--all", "--cpu-interval", "0")


def _start(run_service: Callable[..., Service], base_env: dict[str, str], keys: Keys,
           tmp_path: Path, *command: str) -> tuple[Service, Door, int, Path]:
    port, http = free_port(), free_port()
    release = tmp_path / "release"
    env = {**base_env, "RELEASE_FILE": str(release)}
    service = run_service("--listen", f"tcp://127.0.0.1:{port}", "--server-secret-key",
                          str(keys.server_secret), "--authorized-keys", str(keys.authorized),
                          "--", *(a.replace("HTTP", str(http)) for a in command), env=env)
    return service, Door(port, base_env, keys), http, release


def _frames(process: dict[str, Any]) -> set[str]:
    return {f["function"] for t in process["threads"] for f in t["frames"]}


def test_gunicorn_workers_through_the_one_port(run_service: Callable[..., Service],
                                               base_env: dict[str, str], keys: Keys,
                                               tmp_path: Path,
                                               cli: Callable[..., pexpect.spawn]) -> None:
    service, door, http, release = _start(
        run_service, base_env, keys, tmp_path, str(BIN / "gunicorn"), "--workers", "3",
        "--bind", "127.0.0.1:HTTP", "--chdir", str(TARGETS), "service_app:app")
    master = service.pid

    def settled() -> bool:
        workers = children(master)
        return len(workers) == 3 and door.members() == {
            master: "door", **dict.fromkeys(workers, "member")}

    assert wait_for(settled, 30), "".join(service.output)
    workers = children(master)

    stuck = Request(f"http://127.0.0.1:{http}/stuck")
    stuck.start()
    assert wait_for(lambda: any("stuck_here" in _frames(p)
                                for p in door.stacks_all()["processes"]), 30)
    merged = door.stacks_all()
    assert merged["missing"] == []
    assert (merged["processes"][0]["pid"], merged["processes"][0]["role"]) == (master, "door")
    assert {p["pid"] for p in merged["processes"]} == {master, *workers}
    (holder,) = [p["pid"] for p in merged["processes"] if "stuck_here" in _frames(p)]
    assert holder in workers  # the worker that took the request, not the master
    release.touch()
    stuck.join(60)
    assert stuck.result[0] == 200

    # pdb on one worker, through the port: its next request stops at the line.
    worker = sorted(workers)[1]
    child = cli("pdb", door.address, "--pid", str(worker), "--break",
                f"service_app.py:{BREAK_LINE}", env=door.env(keys.debugger))
    child.expect("waiting for a thread to reach it")
    results: list[Any] = []
    for _ in range(200):  # the kernel hands each request to one worker; until it is ours
        request = Request(f"http://127.0.0.1:{http}/hello")
        request.start()
        request.join(5)
        if request.is_alive():  # stopped in pdb
            break
        results.append(request.result)
    assert request.is_alive() and all(r[0] == 200 for r in results)
    child.expect(r"\(Pdb\) ")
    child.sendline("p __import__('os').getpid()")
    child.expect(rf"\r\n{worker}\r\n")
    child.sendline("c")
    child.expect(pexpect.EOF)
    request.join(60)
    assert request.result == (200, f"hello from worker {worker}\n")

    os.kill(master, signal.SIGHUP)  # reload: new workers answer, the old are gone from ps
    assert wait_for(lambda: not (children(master) & workers) and settled(), 60), \
        "".join(service.output)
    assert not set(door.members()) & workers


def test_uvicorn_spawned_workers_through_the_one_port(run_service: Callable[..., Service],
                                                      base_env: dict[str, str], keys: Keys,
                                                      tmp_path: Path) -> None:
    service, door, http, release = _start(
        run_service, base_env, keys, tmp_path, str(BIN / "uvicorn"), "--workers", "2",
        "--port", "HTTP", "--app-dir", str(TARGETS), "service_asgi:app")
    supervisor = service.pid

    def workers() -> set[int]:
        return {pid for pid, role in door.members().items() if role == "member"}

    assert wait_for(lambda: len(workers()) == 2, 60), "".join(service.output)
    assert door.members()[supervisor] == "door"

    slow = Request(f"http://127.0.0.1:{http}/slow")
    slow.start()

    def task_in_flight() -> list[int]:
        return [p["pid"] for p in door.stacks_all()["processes"]
                if any(f["function"] == "slow_here" for t in p.get("tasks", [])
                       for f in t["frames"])]

    assert wait_for(lambda: len(task_in_flight()) == 1, 30)
    assert task_in_flight()[0] in workers()
    release.touch()
    slow.join(60)
    assert slow.result[0] == 200
    for pid in workers():  # each worker answers through the port on its own
        (process,) = door.json("stacks", "--pid", str(pid), "--cpu-interval", "0")[
            "processes"]
        assert process["pid"] == pid


@pytest.fixture(autouse=True)
def _gunicorn_and_uvicorn() -> None:
    for tool in ("gunicorn", "uvicorn"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not installed in this venv (pip install -e '.[test]')")
