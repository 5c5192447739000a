"""``stacks`` under load: latency with the host idle and with a thread spinning in pure
Python, and how many times one dump gives the GIL away.

While a host thread spins, every time the agent thread gives up the GIL (a blocking call,
a file read through Python's I/O, pyzmq's send and receive) it waits up to one switch
interval (5 ms) to get it back; so it does when it holds the GIL longer than that (the
spinning thread then asks for it). ``handoffs_per_dump`` counts the agent thread's
voluntary context switches per ``stacks`` request with the spinning host (median): one
wait for the GIL usually shows as two or three (the timed wait, then the hand-over), and
the wake-up from ``zmq_poll`` costs one wait on every request.

The target is ``tests/targets/threads.py --threads 50`` (``--spin`` for the loaded case);
the client is in this process, over the agent's ipc socket. ``stacks`` is asked with its
default arguments (CPU over the time since the previous dump: no sample is taken).
``ping_spin_p50_ms`` is the floor: the same round trip with no work behind it.

    python scripts/bench_load.py [--requests N]   # prints the figures as JSON
"""

from __future__ import annotations

import argparse
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

from bench import stop  # scripts/ is this script's directory

from prodbug.client import Client

__all__ = ["measure"]

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "targets" / "threads.py"
_WARM_UP = 5


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _voluntary_switches(pid: int, tid: int) -> int:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def _run(env: dict[str, str], requests: int, spin: bool,
         args: dict[str, Any]) -> dict[str, list[float]]:
    argv = [sys.executable, str(TARGET), "--threads", "50", *(["--spin"] if spin else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"bench_load: the target failed to start: {line!r}")
        facts = json.loads(line[len("READY "):])
        pid = int(facts["pid"])
        with Client(facts["ipc"], timeout=30) as client:
            tid = int(client.request("info")["agent"]["native_id"])
            for _ in range(_WARM_UP):  # linecache, first CPU reading
                client.request("stacks", args)
            out: dict[str, list[float]] = {"stacks": [], "ping": [], "switches": []}
            for _ in range(requests):
                before = _voluntary_switches(pid, tid)
                t0 = time.perf_counter()
                client.request("stacks", args)
                out["stacks"].append((time.perf_counter() - t0) * 1000)
                out["switches"].append(_voluntary_switches(pid, tid) - before)
            for _ in range(requests):
                t0 = time.perf_counter()
                client.request("ping")
                out["ping"].append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        stop(proc)


def measure(env: dict[str, str], requests: int, *,
            args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Latency of ``stacks`` (50 threads) with the host idle and spinning, the ``ping``
    floor while spinning, and the agent's GIL hand-offs per dump while spinning.

    ``env`` is the target's environment (``PRODBUG_RUNTIME_DIR`` says where its ipc socket
    goes; a TCP port in it is opened but not used). ``args``: the ``stacks`` arguments
    (default: none, as ``prodbug stacks`` sends)."""
    idle = _run(env, requests, False, args or {})
    spin = _run(env, requests, True, args or {})
    return {
        "requests": requests,
        "idle_p50_ms": round(statistics.median(idle["stacks"]), 2),
        "idle_p99_ms": round(_pct(idle["stacks"], 0.99), 2),
        "spin_p50_ms": round(statistics.median(spin["stacks"]), 2),
        "spin_p99_ms": round(_pct(spin["stacks"], 0.99), 2),
        "ping_spin_p50_ms": round(statistics.median(spin["ping"]), 2),
        "handoffs_per_dump": statistics.median(spin["switches"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cpu-interval", type=float, default=None, metavar="SECONDS",
                        help="ask with this cpu_interval (default: none, the agent's own)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbload-", dir="/tmp"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
        env["PRODBUG_RUNTIME_DIR"] = str(work / "run")
        print(json.dumps(measure(env, opts.requests, args=None if opts.cpu_interval is None
                                 else {"cpu_interval": opts.cpu_interval})))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
