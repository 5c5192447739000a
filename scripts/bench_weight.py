"""What the agent costs its host to start and to keep: import and start time, memory,
threads, and whether memory grows over many ``stacks`` requests.

``measure(python)`` runs everything in subprocesses of ``python`` (a venv's interpreter
with prodbug installed) and returns:

* ``baseline_ms``: wall time of ``python -c pass`` (median), alternated with the runs below;
* ``import_ms``: ``import prodbug.agent``, timed inside the child (median);
* ``start_ms``: ``import prodbug; prodbug.start_agent()``, timed inside the child (median);
* ``start_wall_ms``: the wall time of that whole child, to set beside ``baseline_ms``;
* ``start_in_host_ms``: import + start in a host that has already imported what a typical
  service has (``HOST_PRELOAD``): the agent's own share of a real service's start;
* ``import_cpu_ms`` and ``start_cpu_ms``: the same two as CPU time (all of the child's
  threads), which other load on the machine disturbs far less than wall time;
* ``rss_added_mb`` and ``threads_added``: the child's VmRSS and thread count after the
  start, minus before the import (median);
* ``leak_mb``: the host's VmRSS after ``requests`` ``stacks`` requests (``LEAK_ARGS``)
  minus after the first 100, over ipc, against a host of 50 threads
  (``tests/targets/threads.py``);
* ``importtime_top``: the 8 largest cumulative entries of ``-X importtime`` for import +
  start, ``[(module, microseconds), ...]`` (median of 3 runs), leaving out the modules a
  bare ``python -c pass`` imports too.

Bytecode is cached in a private ``PYTHONPYCACHEPREFIX`` (warmed up first), as an installed
package has it; the checkout is not written to. Run: ``python scripts/bench_weight.py
[--python PATH] [--runs N] [--requests N]``; it prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "targets" / "threads.py"
#: The leak check's requests: the whole path (the CPU window, waits, tasks, and the
#: innermost frame's locals rendered by saferepr), as `prodbug stacks --locals` sends it.
LEAK_ARGS: dict[str, object] = {"locals": 1}

_STATUS = r"""
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out
"""

_IMPORT = r"""
import json, time
t, c = time.perf_counter(), time.process_time()
import prodbug.agent
print(json.dumps({"ms": (time.perf_counter() - t) * 1000,
                  "cpu_ms": (time.process_time() - c) * 1000}))
"""

_START = _STATUS + r"""
import json, os, time
before = status()
t, c = time.perf_counter(), time.process_time()
import prodbug
prodbug.start_agent()
ms, cpu_ms = (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000
after = status()
print(json.dumps({"ms": ms, "cpu_ms": cpu_ms, "rss_kb": after["VmRSS"] - before["VmRSS"],
                  "threads": after["Threads"] - before["Threads"]}))
os._exit(0)  # the figures are taken: skip the agent's orderly stop at exit
"""

#: What a typical service has imported before it starts the agent (its framework's share).
HOST_PRELOAD = "import asyncio, dataclasses, json, logging, typing"

_IN_HOST = HOST_PRELOAD + r"""
import json, time
t = time.perf_counter()
import prodbug
prodbug.start_agent()
print(json.dumps({"ms": (time.perf_counter() - t) * 1000}))
import os
os._exit(0)
"""

_DRIVER = r"""
import json, sys
from prodbug.client import Client

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")

endpoint, pid, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
args = json.loads(sys.argv[4])
with Client(endpoint, timeout=30) as client:
    for _ in range(100):
        client.request("stacks", args)
    first = rss(pid)
    for _ in range(total - 100):
        client.request("stacks", args)
    last = rss(pid)
print(json.dumps({"first_kb": first, "last_kb": last}))
"""


def _env(pycache: str, runtime: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PRODBUG_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["PRODBUG_RUNTIME_DIR"] = runtime
    return env


def _run(python: str, code: str, env: dict[str, str], *flags: str) -> tuple[str, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([python, *flags, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    wall = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{python} -c ... failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, proc.stderr, wall


def _importtime(python: str, code: str, env: dict[str, str]) -> dict[str, int]:
    """``-X importtime`` of ``code``: each module's cumulative microseconds."""
    _, err, _ = _run(python, code, env, "-X", "importtime")
    out = {}
    for line in err.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            out[name.strip()] = int(cumulative)
    return out


def importtime_top(python: str, env: dict[str, str], runs: int = 3,
                   top: int = 8) -> list[tuple[str, int]]:
    """The ``top`` largest cumulative ``-X importtime`` entries of import + start, leaving
    out what a bare ``python -c pass`` imports too (``site`` and what it brings)."""
    bare = set(_importtime(python, "pass", env))
    samples: dict[str, list[int]] = {}
    for _ in range(runs):
        for name, us in _importtime(python, "import prodbug; prodbug.start_agent()",
                                    env).items():
            if name not in bare:
                samples.setdefault(name, []).append(us)
    medians = {name: int(statistics.median(v)) for name, v in samples.items()}
    return sorted(medians.items(), key=lambda item: -item[1])[:top]


def leak(python: str, env: dict[str, str], requests: int = 10_000) -> float:
    """The host's RSS after ``requests`` stacks requests minus after the first 100, in MB."""
    proc = subprocess.Popen([python, str(TARGET), "--threads", "50"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout is None:
            raise RuntimeError("no stdout")
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"leak target failed to start: {line!r}")
        facts = json.loads(line[len("READY "):])
        argv = [python, "-c", _DRIVER, facts["ipc"], str(facts["pid"]), str(requests),
                json.dumps(LEAK_ARGS)]
        driver = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600,
                                check=False)
        if driver.returncode != 0:
            raise RuntimeError(f"leak driver failed: {driver.stderr[-2000:]}")
        result = json.loads(driver.stdout)
    finally:
        proc.kill()
        proc.wait()
    return float(result["last_kb"] - result["first_kb"]) / 1024


def measure(python: str, runs: int = 11, requests: int = 10_000) -> dict[str, Any]:
    """The agent's weight in a host run by ``python`` (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="pbw-") as work:
        runtime = os.path.join(work, "run")
        os.mkdir(runtime, 0o700)
        env = _env(os.path.join(work, "pyc"), runtime)
        _run(python, "import prodbug; prodbug.start_agent()", env)  # writes the bytecode
        baseline, imports, starts, walls, rss, threads = [], [], [], [], [], []
        import_cpu, start_cpu, in_host = [], [], []
        for _ in range(runs):
            baseline.append(_run(python, "pass", env)[2])
            fact = json.loads(_run(python, _IMPORT, env)[0])
            imports.append(fact["ms"])
            import_cpu.append(fact["cpu_ms"])
            out, _, wall = _run(python, _START, env)
            fact = json.loads(out)
            starts.append(fact["ms"])
            start_cpu.append(fact["cpu_ms"])
            in_host.append(json.loads(_run(python, _IN_HOST, env)[0])["ms"])
            walls.append(wall)
            rss.append(fact["rss_kb"] / 1024)
            threads.append(fact["threads"])
        return {
            "python": _run(python, "import sys; print(sys.version.split()[0])", env)[0].strip(),
            "baseline_ms": round(statistics.median(baseline), 1),
            "import_ms": round(statistics.median(imports), 1),
            "start_ms": round(statistics.median(starts), 1),
            "import_cpu_ms": round(statistics.median(import_cpu), 1),
            "start_cpu_ms": round(statistics.median(start_cpu), 1),
            "start_wall_ms": round(statistics.median(walls), 1),
            "start_in_host_ms": round(statistics.median(in_host), 1),
            "rss_added_mb": round(statistics.median(rss), 2),
            "threads_added": int(statistics.median(threads)),
            "leak_mb": round(leak(python, env, requests), 2) if requests else None,
            "importtime_top": importtime_top(python, env),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--requests", type=int, default=10_000,
                        help="stacks requests for the leak check (0: skip it)")
    opts = parser.parse_args()
    print(json.dumps(measure(opts.python, opts.runs, opts.requests), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
