"""``prodbug vscode`` against a spinning host: attach times, and the host's speed before,
during and after.

``sessions`` sessions against one spin target (tests/targets/spin.py), each a new
``prodbug vscode --pid N --port 0 --yes``: initialize, attach, a breakpoint on a line that
never runs, configurationDone, disconnect. Time: from starting the CLI to the DAP
``initialized`` event (the first attach imports and sets up debugpy; later ones set pydevd
up again, as it is taken down after each last detach). Speed: the spinning thread's loop
rate while attached (first session) and after all sessions, as a ratio of the rate
before the first. A second spin target, never attached, runs beside it the whole time:
each rate is divided by the control's over the same window, so that load from other
processes (the figures are often made on a shared 2-core machine) cancels out;
``after_ratio_uncorrected`` is the plain ratio. "After" starts once the agent says it has
taken debugpy's tracing down again (``debugpy_tracing`` off in ``prodbug info``); how long
that took (``stop_ms``) and what it left (``left_after``) come with the figures, with the
time it took to set pydevd up again on the last attach (``restart_ms``).

    .venvs/py3.11/bin/python scripts/bench_vscode.py [--sessions 5]

prints the figures as one JSON object, with ``idle_wakeups`` under "idle_host" (threads
and their context switches per second in an idle host, before and after two sessions: a
figure the machine's load does not blur). ``measure`` is what scripts/bench.py calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _rates, _spin, stop  # scripts/ is this script's directory

ROOT = Path(__file__).resolve().parent.parent
SPIN = ROOT / "tests" / "targets" / "spin.py"


def _window(rate_file: Path, control_file: Path, seconds: float = 3.0) -> tuple[float, float]:
    """The median loop rates of the target and of the control over the same ``seconds``
    (after 0.3 s to settle)."""
    start = time.perf_counter() + 0.3
    time.sleep(seconds + 0.3)
    end = time.perf_counter()
    return (statistics.median(_rates(rate_file, start, end)),
            statistics.median(_rates(control_file, start, end)))


def _session(env: dict[str, str], pid: int, never: int) -> tuple[Any, subprocess.Popen[str],
                                                                  int, float]:
    """Start ``prodbug vscode`` and attach as VS Code does; returns (DAP client, CLI,
    attach request seq, ms from the command to ``initialized``)."""
    from dapclient import DapClient

    t0 = time.perf_counter()
    cli = subprocess.Popen([sys.executable, "-m", "prodbug", "vscode", "--pid", str(pid),
                            "--port", "0", "--yes"], env=env, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert cli.stderr is not None
    port, said = 0, []
    for line in cli.stderr:
        said.append(line)
        if "ready: attach VS Code to 127.0.0.1:" in line:
            port = int(line.split("127.0.0.1:")[1].split()[0])
            break
    if not port:
        cli.kill()
        cli.wait(10)
        raise SystemExit("prodbug vscode did not get ready:\n" + "".join(said))
    dap = DapClient(port)
    dap.request("initialize", clientID="vscode", adapterID="debugpy", pathFormat="path",
                linesStartAt1=True, columnsStartAt1=True)
    attach = dap.send("attach", justMyCode=False)
    dap.event("initialized")
    elapsed = (time.perf_counter() - t0) * 1000
    dap.set_breakpoints(str(SPIN), [never])
    dap.request("configurationDone")
    dap.response(attach)
    return dap, cli, attach, elapsed


def _debugpy_facts(env: dict[str, str], pid: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "prodbug", "info", "--pid", str(pid),
                          "--json"], env=env, capture_output=True, text=True, check=True).stdout
    agent: dict[str, Any] = json.loads(out)["agent"]
    return agent


def _settled(env: dict[str, str], pid: int, timeout: float = 20.0) -> dict[str, Any]:
    """The agent's debugpy facts once it has taken debugpy's tracing down (or given up
    waiting: then ``debugpy_tracing`` says where it is)."""
    deadline = time.monotonic() + timeout
    while True:
        facts = _debugpy_facts(env, pid)
        if facts.get("debugpy_tracing", "off") == "off" or time.monotonic() > deadline:
            return facts
        time.sleep(0.2)


def measure(env: dict[str, str], work: Path, sessions: int) -> dict[str, Any]:
    """Run ``sessions`` VS Code sessions against a spinning host (see the module doc)."""
    sys.path.insert(0, str(ROOT / "tests"))
    rate_file, control_file = work / "rate-vscode", work / "rate-control"
    for path in (rate_file, control_file):
        path.unlink(missing_ok=True)
    never = next(n for n, t in enumerate(SPIN.read_text().splitlines(), 1)
                 if "interpreter shutting down" in t) + 1
    times: list[float] = []
    facts: dict[str, Any] = {}
    control, _ = _spin(env, control_file)
    try:
        proc, pid = _spin(env, rate_file)
        try:
            time.sleep(2.0)  # the agent's own start-up is not the host's speed
            before = _window(rate_file, control_file)
            during = before
            for n in range(sessions):
                dap, cli, _, elapsed = _session(env, pid, never)
                times.append(elapsed)
                try:
                    if n == 0:
                        during = _window(rate_file, control_file)
                    dap.request("disconnect", restart=False, terminateDebuggee=False)
                    dap.close()
                finally:
                    cli.terminate()  # like Ctrl-C: the CLI closes its session first
                    cli.wait(10)
                    if cli.stderr:
                        cli.stderr.close()
            facts = _settled(env, pid)  # the agent takes debugpy down after the last detach
            after = _window(rate_file, control_file)
        finally:
            stop(proc)
    finally:
        stop(control)

    def ratio(window: tuple[float, float]) -> float:
        return round((window[0] / window[1]) / (before[0] / before[1]), 3)

    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "first_attach_ms": round(times[0]),
            "later_attach_ms": round(statistics.median(times[1:] or times)),
            "before": round(before[0]),
            "during_ratio": ratio(during),
            "after_ratio": ratio(after),
            "after_ratio_uncorrected": round(after[0] / before[0], 3),
            "tracing_after": facts.get("debugpy_tracing"),
            "left_after": facts.get("debugpy_left"),
            "stop_ms": facts.get("debugpy_stop_ms"),
            "restart_ms": facts.get("debugpy_restart_ms")}


def _switches(pid: int) -> tuple[int, int]:
    """Context switches of all the threads of ``pid`` so far, and how many threads."""
    total, tasks = 0, list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += sum(int(line.split()[1]) for line in
                         (task / "status").read_text().splitlines() if "ctxt_switches" in line)
    return total, len(tasks)


def idle_wakeups(env: dict[str, str], work: Path, seconds: float = 5.0) -> dict[str, Any]:
    """An idle host (tests/targets/threads.py, 4 blocked threads) before and after two VS
    Code sessions: its threads, and their context switches per second. Unlike loop rates,
    these do not depend on what else the machine runs; a debugger left behind shows up as
    threads that wake several times a second."""
    target = ROOT / "tests" / "targets" / "threads.py"
    proc = subprocess.Popen([sys.executable, str(target), "--threads", "4"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        pid = int(json.loads(line[len("READY "):])["pid"])
        time.sleep(1.0)

        def rate() -> tuple[float, int]:
            first, threads = _switches(pid)
            time.sleep(seconds)
            return round((_switches(pid)[0] - first) / seconds, 1), threads

        before = rate()
        for _ in range(2):
            dap, cli, _, _ = _session(env, pid, 1)
            try:
                dap.request("disconnect", restart=False, terminateDebuggee=False)
                dap.close()
            finally:
                cli.terminate()
                cli.wait(10)
                if cli.stderr:
                    cli.stderr.close()
        _settled(env, pid)
        time.sleep(1.0)
        after = rate()
    finally:
        stop(proc)
    return {"switches_per_s_before": before[0], "threads_before": before[1],
            "switches_per_s_after": after[0], "threads_after": after[1]}


def bench_env(work: Path) -> dict[str, str]:
    """An environment where the bench's targets and CLI find each other (fresh keys)."""
    from prodbug.keys import write_certificate_pair

    _, server_sec = write_certificate_pair(work / "keys", "server")
    write_certificate_pair(work / "keys", "bench")
    (work / "auth").mkdir()
    shutil.copy(work / "keys" / "bench.key", work / "auth")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
    env.update(PRODBUG_RUNTIME_DIR=str(work / "run"), PRODBUG_LISTEN="tcp://127.0.0.1:0",
               PRODBUG_SERVER_SECRET_KEY=str(server_sec),
               PRODBUG_AUTHORIZED_KEYS=str(work / "auth"))
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=5)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbbench-vscode-", dir="/tmp"))
    try:
        env = bench_env(work)
        figures = measure(env, work, opts.sessions)
        figures["idle_host"] = idle_wakeups(env, work)
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
