"""What sampling costs the host: its pure-Python loop alone, while ``prodbug profile``
samples it at 100 Hz, and while ``py-spy record`` does (its default mode: it pauses the
process for each sample), alternated in rounds on one process; each run's ratio is to
the host alone in the window just before it (a shared machine's load drifts), and the
median is shown. A third figure alternates 0.25 s windows inside one process (the
agent's sampler class, no CLI, no socket): the steadiest on a noisy machine. Last, the
sampler thread's own CPU time, which machine noise cannot blur.

    .venv/bin/python scripts/bench_profile.py [--rounds 3] [--seconds 2]

The host is tests/targets/spin.py (a thread calling a function in a loop, writing its
rate every 0.25 s); the agent listens on its local socket only (``--pid``).
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

from bench import WORK, _rates, _spin, stop

#: The host's loop in the bench's own process, 0.25 s alone and 0.25 s with a sampler
#: session (the agent's own class, as profile.open starts it), in ABBA order.
INPROCESS = r"""
import json, statistics, sys, time
from prodbug.agent.profiler import ProfileSession
""" + WORK + r"""
pairs, rate = int(sys.argv[1]), float(sys.argv[2])
ratios, cpu = [], []
work(0.3)
for i in range(pairs):
    if i % 2:  # ABBA: alone first, then with the sampler first
        alone = work(0.25)
    session = ProfileSession("bench", "bench", heartbeat=60, seconds=0.3, rate=rate,
                             threads=None)
    session.start()
    sampled = work(0.25)
    session.end("done")
    session._thread.join()
    if not i % 2:
        alone = work(0.25)
    ratios.append(sampled / alone)
    cpu.append(session.sampler_cpu / max(session.stopped - session.started, 1e-9))
print(json.dumps({"ratios": ratios, "sampler_cpu": statistics.median(cpu)}))
"""


def _window(rate_file: Path, seconds: float) -> float:
    """The median loop rate over the next ``seconds`` (after 0.3 s to settle)."""
    time.sleep(0.3)
    start = time.perf_counter()
    time.sleep(seconds)
    return statistics.median(_rates(rate_file, start, time.perf_counter()))


def _while(argv: list[str], env: dict[str, str], rate_file: Path, seconds: float,
           ready: str) -> tuple[float, str]:
    """The loop rate while ``argv`` runs (once it has said ``ready``), and what it
    printed."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if ready in line:
                break
        else:
            raise SystemExit(f"{argv[0]} ended before it started sampling")
        rate = _window(rate_file, seconds)
        out, _ = proc.communicate(timeout=seconds + 30)
        return rate, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="samples per second for both profilers (default: %(default)g)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="the measured window of each run (default: %(default)g)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbbench-profile-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
    env["PRODBUG_RUNTIME_DIR"] = str(work / "run")
    (work / "run").mkdir(mode=0o700)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy and os.geteuid() != 0:
        print("py-spy needs ptrace rights (root here): left out", file=sys.stderr)
        spy = None
    rate_file = work / "rate"
    proc, pid = _spin(env, rate_file)
    # Each run beside the host alone just before it: a ratio per pair, then the median
    # (the load of a shared machine drifts; adjacent windows see about the same).
    ours: list[float] = []
    theirs: list[float] = []
    base: list[float] = []
    sampler: list[float] = []  # the sampler thread's CPU seconds per second
    length = f"{opts.seconds + 1:g}"
    try:
        time.sleep(1.0)  # warm up
        for _ in range(opts.rounds):
            alone = _window(rate_file, opts.seconds)
            base.append(alone)
            rate, out = _while([sys.executable, "-m", "prodbug", "profile", "--pid",
                                str(pid), "--seconds", length, "--rate", f"{opts.rate:g}",
                                "--json"], env, rate_file, opts.seconds, "prodbug: profiling")
            ours.append(rate / alone)
            result = json.loads(out[out.index("{"):])
            sampler.append(result["sampler_cpu"] / result["duration"])
            if spy:
                alone = _window(rate_file, opts.seconds)
                base.append(alone)
                theirs.append(_while([spy, "record", "--pid", str(pid), "--duration",
                                      length, "--rate", f"{opts.rate:g}", "--output",
                                      str(work / "spy.svg")],
                                     env, rate_file, opts.seconds, "Sampling process")[0]
                              / alone)
    finally:
        stop(proc)
    inproc = json.loads(subprocess.run(
        [sys.executable, "-c", INPROCESS, str(opts.rounds * 8), f"{opts.rate:g}"],
        env=env, check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(work, ignore_errors=True)
    print(f"host loop, Python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'':44} {'vs alone':>9} {'cost':>7}")
    rows = [(f"prodbug profile --rate {opts.rate:g} (the CLI)", ours)]
    if spy:
        rows.append((f"py-spy record --rate {opts.rate:g} (default mode)", theirs))
    rows.append((f"sampler in process, {opts.rounds * 8} x 0.25 s pairs", inproc["ratios"]))
    for name, ratios in rows:
        ratio = statistics.median(ratios)
        print(f"  {name:44} {ratio:9.3f} {100 * (1 - ratio):6.1f}%")
    print(f"  (spin.py alone: {statistics.median(base) / 1e6:.2f} M calls/s; medians of "
          f"ratios to the window just before)")
    if not spy:
        print("  (py-spy absent: pip install py-spy to compare)")
    print(f"  the sampler thread's own CPU: {100 * statistics.median(sampler):.2f}% of one "
          f"core (CLI runs), {100 * inproc['sampler_cpu']:.2f}% (in process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
