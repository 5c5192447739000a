"""What an armed snapshot or logpoint costs the host: its pure-Python loop alone, with a
probe armed but never hit (in another function, and in the loop's own function), and
with a logpoint on a line run ~100,000 times a second, rate-limited to 50 lines a second.
Rounds alternate on one process so that machine noise hits every case alike; ratios are
against the host alone in the same run.

    .venv/bin/python scripts/bench_probes.py [--rounds 3] [--seconds 2]

The host is tests/targets/probe_spin.py; the agent listens on its local socket only
(``--pid``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ROOT, stop

SPIN = ROOT / "tests" / "targets" / "probe_spin.py"


def _line(marker: str) -> int:
    return next(n for n, text in enumerate(SPIN.read_text().splitlines(), 1)
                if text.rstrip().endswith(marker))


Rates = tuple[float, float]


def _window(rate_file: Path, seconds: float) -> Rates:
    """The median loop rates over the next ``seconds`` (after 0.3 s to settle): per
    second, and per second of the loop thread's CPU time."""
    time.sleep(0.3)
    start = time.perf_counter()
    time.sleep(seconds)
    until = time.perf_counter()
    rows = [line.split() for line in rate_file.read_text().splitlines()]
    rows = [row for row in rows if start <= float(row[0]) <= until]
    return (statistics.median(float(row[1]) for row in rows),
            statistics.median(float(row[2]) for row in rows))


def _while(argv: list[str], env: dict[str, str], rate_file: Path,
           seconds: float) -> tuple[Rates, str, float]:
    """The loop rate while ``argv`` (a probe CLI) runs, what it printed, and how long the
    probe was armed."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "armed at" in line:
                armed = time.monotonic()
                break
        else:
            raise SystemExit(f"the probe did not arm (exit {proc.wait()}): {argv}")
        rate = _window(rate_file, seconds)
        out, _ = proc.communicate(timeout=seconds + 30)
        return rate, out, time.monotonic() - armed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen([sys.executable, str(SPIN)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        stop(proc)
        raise SystemExit(f"the spin target failed to start: {line!r}")
    facts = json.loads(line[len("READY "):])
    return proc, int(facts["pid"]), int(facts["every"])


def cold(n: int) -> int:
    return -n  # BENCH-COLD


def hot(n: int) -> int:
    if n < 0:
        n = -n  # BENCH-UNHIT
    return n  # BENCH-HOT


def _per_call(calls: int, repeats: int) -> float:
    """The least time per call of ``hot`` over ``repeats`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for n in range(calls):
            hot(n)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def in_process(env: dict[str, str], repeats: int) -> None:
    """Per call of a function, in this very process (its agent started here): alone,
    with a logpoint armed in another function, on a line of it never run, and on its
    line (every call a hit, 50 lines/s let through). The least of several runs: noise only adds."""
    import prodbug

    os.environ.update({k: v for k, v in env.items() if k.startswith("PRODBUG_")})
    agent = prodbug.start_agent()
    calls = 1_000_000
    src = Path(__file__).read_text().splitlines()
    hot_line, unhit, cold_line = (
        next(n for n, text in enumerate(src, 1) if text.rstrip().endswith(mark))
        for mark in ("# BENCH-HOT", "# BENCH-UNHIT", "# BENCH-COLD"))
    cli = [sys.executable, "-m", "prodbug", "logpoint", "--pid", str(os.getpid()),
           "--expire", "10m", "--rate", "50/s", "--json"]
    try:
        alone = _per_call(calls, repeats)
        figures = {}
        for name, where in (("armed in another function", cold_line),
                            ("armed, unhit (a line of it never run)", unhit),
                            ("hit on every call, 50 lines/s", hot_line)):
            proc = subprocess.Popen([*cli, f"bench_probes.py:{where}", "n={n}"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            try:
                assert proc.stderr is not None
                first = proc.stderr.readline()
                if "armed at" not in first:
                    raise SystemExit(f"the probe did not arm: {first}")
                figures[name] = _per_call(calls, repeats)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=30)
    finally:
        agent.stop()
    print(f"\nper call of a small function in one process ({repeats} runs of "
          f"{calls:,} calls, the least), Python {sys.version.split()[0]}")
    print(f"  {'alone':40} {alone * 1e9:7.1f} ns")
    for name, value in figures.items():
        extra = value - alone
        print(f"  {name:40} {value * 1e9:7.1f} ns  ({extra * 1e9:+.1f} ns a call: "
              f"{100 * extra * 100_000:+.2f}% of a second at 100,000 calls/s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="the measured window of each run (default: %(default)g)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="runs of the in-process measure (default: %(default)s)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbbench-probes-", dir="/tmp"))
    (work / "run").mkdir(mode=0o700)
    rate_file = work / "rate"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
    env.update(PRODBUG_RUNTIME_DIR=str(work / "run"), RATE_FILE=str(rate_file),
               PRODBUG_LISTEN="")
    proc, pid, every = _start(env)
    expire = f"{opts.seconds + 1:g}s"
    cli = [sys.executable, "-m", "prodbug"]
    cases = {
        "snapshot armed, unhit (other function)": [
            *cli, "snapshot", "--pid", str(pid), f"probe_spin.py:{_line('# PROBE-COLD')}",
            "--expire", expire],
        "logpoint armed, unhit (the loop's own)": [
            *cli, "logpoint", "--pid", str(pid), f"probe_spin.py:{_line('# PROBE-UNHIT')}",
            "n={n}", "--expire", expire],
        "logpoint hit ~100k/s, 50 lines/s": [
            *cli, "logpoint", "--pid", str(pid), f"probe_spin.py:{_line('# PROBE-HOT')}",
            "n={n}", "--rate", "50/s", "--expire", expire, "--json"],
    }
    rates: dict[str, list[Rates]] = {"alone": [], **{name: [] for name in cases}}
    lines: list[float] = []
    try:
        time.sleep(1.0)  # warm up
        for _ in range(opts.rounds):
            rates["alone"].append(_window(rate_file, opts.seconds))
            for name, argv in cases.items():
                rate, out, armed = _while(argv, env, rate_file, opts.seconds)
                rates[name].append(rate)
                if "--json" in argv:
                    summary = json.loads([ln for ln in out.splitlines()
                                          if ln.startswith('{"ended"')][-1])
                    lines.append(summary["emitted"] / armed)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    base = [statistics.median(r[k] for r in rates["alone"]) for k in (0, 1)]
    print(f"host loop (tests/targets/probe_spin.py), {opts.rounds} alternated rounds of "
          f"{opts.seconds:g} s, Python {sys.version.split()[0]}")
    print(f"  {'':40} {'M it/s':>8} {'cost':>7} {'M it/CPU-s':>11} {'cost':>7}")
    for name, values in rates.items():
        wall, cpu = (statistics.median(r[k] for r in values) for k in (0, 1))
        print(f"  {name:40} {wall / 1e6:8.2f} {100 * (1 - wall / base[0]):6.1f}% "
              f"{cpu / 1e6:11.2f} {100 * (1 - cpu / base[1]):6.1f}%")
    hot = statistics.median(r[0] for r in rates["logpoint hit ~100k/s, 50 lines/s"]) / every
    print(f"  the hot line ran {hot:,.0f} times/s while armed (one in {every} iterations); "
          f"{statistics.median(lines):.1f} lines/s were sent")
    print("  (cost: 1 - rate / rate alone; M it/CPU-s counts the loop thread's own CPU time "
          "only, which other processes on a busy machine do not blur)")
    work = Path(tempfile.mkdtemp(prefix="pbbench-probes-", dir="/tmp"))
    try:
        (work / "run").mkdir(mode=0o700)
        env["PRODBUG_RUNTIME_DIR"] = str(work / "run")
        in_process(env, opts.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
