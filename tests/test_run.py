"""``prodbug run -- CMD``: the agent in every process of the service, and nowhere else.

Membership is checked through the local registry (``prodbug ps --json``) and the actual
process tree (psutil): every worker alive has an agent, and tools the service runs have none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BIN, TARGETS, Service, children, run_cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "agent" / "examples"


def agents(env: dict[str, str]) -> dict[int, dict[str, Any]]:
    """The local registry, as ``prodbug ps --json`` shows it: pid -> entry."""
    result = run_cli("ps", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {entry["pid"]: entry for entry in json.loads(result.stdout)["agents"]}


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_master_and_workers_have_agents_across_a_reload(
        run_service: Callable[..., Service], base_env: dict[str, str], worker_class: str) -> None:
    service = run_service("--", str(BIN / "gunicorn"), "--workers", "3", "--worker-class",
                          worker_class, "--bind", "127.0.0.1:0", "--chdir", str(EXAMPLES),
                          "wsgi_app:app", env=base_env)
    master = service.pid  # exec: gunicorn runs as the pid prodbug run started with

    def all_workers_registered(expected: int) -> bool:
        workers = children(master)
        known = agents(base_env)
        return (len(workers) == expected and master in known
                and workers <= {pid for pid, e in known.items() if e["ppid"] == master})

    assert wait_for(lambda: all_workers_registered(3), 30), "".join(service.output)
    old = children(master)
    assert "gunicorn" in " ".join(agents(base_env)[master]["argv"])

    os.kill(master, signal.SIGHUP)  # reload: gunicorn replaces every worker
    assert wait_for(lambda: not (children(master) & old) and all_workers_registered(3), 30), \
        "".join(service.output)
    known = agents(base_env)
    assert set(known) == {master} | children(master)  # the old workers are gone from ps
    assert not set(known) & old


def test_uvicorn_spawned_workers_have_agents_and_its_helper_none(
        run_service: Callable[..., Service], base_env: dict[str, str]) -> None:
    service = run_service("--", str(BIN / "uvicorn"), "--workers", "2", "--port", "0",
                          "--app-dir", str(EXAMPLES), "asgi_app:app", env=base_env)
    master = service.pid

    def workers() -> set[int]:
        return {p.pid for p in psutil.Process(master).children()
                if "--multiprocessing-fork" in p.cmdline()}

    assert wait_for(lambda: len(workers()) == 2 and {master, *workers()} <= set(
        agents(base_env)), 30), "".join(service.output)
    # multiprocessing's resource tracker is a child too, not a worker: left alone.
    others = children(master) - workers()
    assert not others & set(agents(base_env))


def test_multiprocessing_workers_get_agents_tools_do_not(
        run_service: Callable[..., Service], base_env: dict[str, str]) -> None:
    outside = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                             text=True, env=base_env, check=False)
    service = run_service("--", sys.executable, str(TARGETS / "run_service.py"), env=base_env)
    facts = service.facts()
    workers = facts["workers"]
    wanted = {facts["pid"], *workers.values()}
    assert wait_for(lambda: wanted <= set(agents(base_env)), 20), (facts, agents(base_env))
    known = agents(base_env)
    assert {known[pid]["ppid"] for pid in workers.values()} >= {facts["pid"]}
    # A python -c the service runs: prodbug never imported, no agent.
    assert facts["helper"] not in known
    assert facts["helper_says"] == {"prodbug": False, "threads": ["MainThread"]}
    # pip: the same output as outside prodbug run.
    assert facts["pip"] == [outside.returncode, outside.stdout, outside.stderr]
    assert facts["pid"] == service.pid


def test_the_images_own_sitecustomize_still_runs(
        run_service: Callable[..., Service], base_env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "sitecustomize.py").write_text(
        "import os\nMARK = 41\n"
        "if os.environ.get('PRODBUG_RUN_PID') == str(os.getpid()):  # not prodbug's own CLI\n"
        "    print('image sitecustomize ran', flush=True)\n"
        "def mark():\n    return MARK + 1\n")
    code = ("import sitecustomize, sys; from prodbug.agent import current_agent; "
            "print('READY', {'mark': sitecustomize.mark(), 'file': sitecustomize.__file__, "
            "'agent': current_agent() is not None, 'modules': sys.modules['sitecustomize'] "
            "is sitecustomize}); sys.stdout.flush()")
    # The deploy kit's copy of the bootstrap on the path too: it must not run twice.
    env = {**base_env, "PYTHONPATH": os.pathsep.join([str(ROOT / "agent" / "sitecustomize"),
                                                      str(image)])}
    service = run_service("--", sys.executable, "-c", code, env=env)
    assert service.proc.wait(30) == 0
    service.pump.join(10)
    out = "".join(service.output)
    assert out.count("image sitecustomize ran") == 1, out
    assert f"'mark': 42, 'file': '{image / 'sitecustomize.py'}', 'agent': True, " \
           f"'modules': True" in out, out


def test_every_python_starts_the_agent_in_tools_too(base_env: dict[str, str]) -> None:
    code = ("import subprocess, sys; print(subprocess.run([sys.executable, '-c', "
            "'import sys; print(\"prodbug\" in sys.modules)'], capture_output=True, "
            "text=True).stdout.strip())")
    plain = run_cli("run", "--", sys.executable, "-c", code, env=base_env)
    every = run_cli("run", "--every-python", "--", sys.executable, "-c", code, env=base_env)
    assert (plain.stdout, every.stdout) == ("False\n", "True\n"), (plain, every)


@pytest.mark.parametrize(("argv", "message"), [
    ([], "prodbug run: no command to run; usage: prodbug run [options] -- CMD ARGS..."),
    (["--"], "prodbug run: no command to run; usage: prodbug run [options] -- CMD ARGS..."),
    (["--", "prodbug-no-such-command", "x"],
     "prodbug run: command not found: prodbug-no-such-command (not in PATH)"),
    (["--", "./no/such/file"], "prodbug run: cannot run ./no/such/file: no such file"),
    (["--listen", "tcp://127.0.0.1:0", "--", "true"],
     "prodbug run: PRODBUG_LISTEN needs PRODBUG_SERVER_SECRET_KEY"),
])
def test_errors_are_one_line_and_exit_2(base_env: dict[str, str], argv: list[str],
                                        message: str) -> None:
    result = run_cli("run", *argv, env=base_env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_options_become_the_agents_variables(base_env: dict[str, str]) -> None:
    code = ("import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
            "if k.startswith('PRODBUG_') or k == 'PYTHONPATH'}))")
    audit = Path.cwd() / "audit.log"  # given relative: the service may change directory
    result = run_cli("run", "--service", "api", "--audit-log", "audit.log", "--hang-dump", "5",
                     "--", sys.executable, "-c", code,
                     env={**base_env, "PYTHONPATH": "/somewhere"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["PRODBUG_SERVICE"] == "api"
    assert seen["PRODBUG_AUDIT_LOG"] == str(audit)
    assert seen["PRODBUG_HANG_DUMP"] == "5"
    assert seen["PYTHONPATH"] == os.pathsep.join(
        [str(ROOT / "prodbug" / "_bootstrap"), "/somewhere"])
    assert seen["PRODBUG_RUN_PID"].isdigit()


def test_a_broken_image_sitecustomize_fails_as_it_would_without_prodbug(
        base_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nif sys.argv[0] == '-c':  # not prodbug's own CLI (-m)\n"
        "    raise ValueError('image broke')\n")
    env = {**base_env, "PYTHONPATH": str(tmp_path)}
    code = "import sys; print('prodbug' in sys.modules)"
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=False)
    inside = run_cli("run", "--", sys.executable, "-c", code, env=env)
    assert "ValueError: image broke" in outside.stderr
    assert (inside.returncode, inside.stderr) == (outside.returncode, outside.stderr)
    assert (outside.stdout, inside.stdout) == ("False\n", "True\n")  # the agent started still
