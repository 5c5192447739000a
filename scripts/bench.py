"""prodbug's benchmarks. Every figure comes with a baseline measured in the same run.

1. ``stacks`` latency, 50 threads, over CURVE TCP: host idle, and with a thread spinning in
   pure Python; baseline: ``ping`` on the same connection.
2. The CLI end to end (``prodbug stacks --json``); baseline: a bare ``python -c pass``.
3. The agent thread's CPU time and wake-ups over 10 s of idleness.
4. The host's pure-Python loop throughput with the agent running vs without, alternated
   in one process.
5. ``prodbug pdb --thread``: time from the command to the prompt, and the host's loop
   speed while a ``--break`` is armed but not hit, and after the sessions, vs before.
6. ``prodbug vscode``: time from the command to the DAP ``initialized`` event (the first
   attach starts debugpy; later ones reuse it), and the host's loop speed before, during
   (attached, a breakpoint set on a line that never runs) and after.
7. One port for a service of 16 processes: ``stacks --all`` (one request per process,
   relayed in parallel by the door) vs asking each process in turn through the same door;
   and the time from ``kill -9`` of the door until a member answers on the port.
8. ``ssh://`` targets through a throwaway local sshd (as the tests run it): ``prodbug stacks
   ssh://.../PORT`` (a TCP forward) and ``ssh://... --pid N`` (finding the socket, then a
   Unix-socket forward) beside the SSH floor (``ssh HOST true``) and beside running the CLI
   on the far side (``ssh HOST prodbug stacks --pid N``). Skipped, saying why, without sshd.
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

from prodbug.client import Client, Credentials
from prodbug.keys import load_certificate, write_certificate_pair

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "tests" / "targets" / "threads.py"

#: The host's pure-Python loop, for the throughput figures (the code of a host process).
WORK = r"""
def work(seconds):
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
    return n / seconds
"""

LOOP = r"""
import json, sys, time
import prodbug
from prodbug.agent import start_agent
""" + WORK + r"""

rounds, seconds = int(sys.argv[1]), float(sys.argv[2])
without, with_agent = [], []
for _ in range(rounds):
    without.append(work(seconds))
    agent = start_agent()
    with_agent.append(work(seconds))
    agent.stop()
print(json.dumps({"without": without, "with": with_agent}))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_target(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, str(TARGET), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"bench target failed to start: {line!r}")
    return proc, json.loads(line[len("READY "):])


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def latency(client: Client, cmd: str, args: dict[str, object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.request(cmd, args)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def thread_cpu(pid: int, tid: int) -> tuple[float, int]:
    """CPU seconds and context switches (voluntary + involuntary) of one thread."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    switches = 0
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.endswith("ctxt_switches:") or "ctxt_switches" in line:
            switches += int(line.split()[1])
    return cpu, switches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--only", type=lambda text: {int(n) for n in text.split(",")},
                        default=set(range(1, 9)), metavar="N[,N]",
                        help="run only these sections (default: all)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbbench-", dir="/tmp"))
    try:
        server_pub, server_sec = write_certificate_pair(work / "keys", "server")
        _, client_sec = write_certificate_pair(work / "keys", "bench")
        (work / "auth").mkdir()
        shutil.copy(work / "keys" / "bench.key", work / "auth")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
        env.update(PRODBUG_RUNTIME_DIR=str(work / "run"), PRODBUG_LISTEN="tcp://127.0.0.1:0",
                   PRODBUG_SERVER_SECRET_KEY=str(server_sec),
                   PRODBUG_AUTHORIZED_KEYS=str(work / "auth"))
        creds = Credentials(load_certificate(client_sec), load_certificate(server_pub).public_key)
        print(f"prodbug bench on Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

        if opts.only & {1, 2, 3, 4}:
            _sections_1_to_4(opts, env, creds, client_sec, server_pub)
        if 5 in opts.only:
            pdb_sessions(env, work, opts.sessions)
        if 6 in opts.only:
            vscode_sessions(env, work, opts.sessions)
        if 7 in opts.only:
            service_fanout(env, creds, opts.rounds)
        if 8 in opts.only:
            ssh_targets(env, work, client_sec, server_pub, opts.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _sections_1_to_4(opts: argparse.Namespace, env: dict[str, str], creds: Credentials,
                     client_sec: Path, server_pub: Path) -> None:
    if 1 in opts.only:
        print("\n1. stacks latency, 50 threads, CURVE TCP, cpu_interval=0 "
              f"({opts.requests} requests each)")
        for label, extra in (("host idle", ()), ("thread spinning", ("--spin",))):
            proc, facts = start_target(env, "--threads", "50", *extra)
            try:
                with Client(facts["tcp"], creds, timeout=30) as client:
                    latency(client, "stacks", {"cpu_interval": 0}, 5)  # warm up
                    ping = latency(client, "ping", {}, opts.requests)
                    stacks = latency(client, "stacks", {"cpu_interval": 0}, opts.requests)
            finally:
                stop(proc)
            print(f"   {label:16} stacks median {statistics.median(stacks):6.2f} ms  "
                  f"p99 {pct(stacks, 0.99):6.2f} ms | ping median "
                  f"{statistics.median(ping):5.2f} ms  p99 {pct(ping, 0.99):5.2f} ms | "
                  f"stacks/ping {statistics.median(stacks) / statistics.median(ping):5.1f}x")

    if opts.only & {2, 3}:
            print("\n2. CLI end to end: prodbug stacks HOST:PORT --json --cpu-interval 0 (15 runs)")
            proc, facts = start_target(env, "--threads", "50")
            cli_env = {**env, "PRODBUG_CLIENT_SECRET_KEY": str(client_sec),
                       "PRODBUG_SERVER_KEY": str(server_pub)}
            try:
                def timed(argv: list[str]) -> float:
                    t0 = time.perf_counter()
                    subprocess.run(argv, env=cli_env, check=True, stdout=subprocess.DEVNULL)
                    return (time.perf_counter() - t0) * 1000
                bare, cli = [], []
                for _ in range(15):  # alternated, so that machine noise hits both alike
                    bare.append(timed([sys.executable, "-c", "pass"]))
                    cli.append(timed([sys.executable, "-m", "prodbug", "stacks",
                                      facts["tcp"].removeprefix("tcp://"), "--json",
                                      "--cpu-interval", "0"]))
                print(f"   prodbug stacks median {statistics.median(cli):6.1f} ms | python -c pass "
                      f"median {statistics.median(bare):5.1f} ms | ratio "
                      f"{statistics.median(cli) / statistics.median(bare):4.1f}x")
                spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
                if spy and os.geteuid() == 0:
                    runs = [timed([spy, "dump", "--pid", str(facts["pid"])]) for _ in range(15)]
                    spy_ms = statistics.median(runs)
                    print(f"   py-spy dump --pid median {spy_ms:6.1f} ms (needs ptrace) | "
                          f"prodbug/py-spy {statistics.median(cli) / spy_ms:4.1f}x")

                print(f"\n3. agent thread while idle for {opts.idle_seconds:g} s")
                with Client(facts["tcp"], creds, timeout=30) as client:
                    tid = client.request("info")["agent"]["native_id"]
                pid = int(facts["pid"])
                cpu0, sw0 = thread_cpu(pid, tid)
                time.sleep(opts.idle_seconds)
                cpu1, sw1 = thread_cpu(pid, tid)
                print(f"   CPU {1000 * (cpu1 - cpu0):.1f} ms, context switches {sw1 - sw0} "
                      f"(kernel tick {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms)")
            finally:
                stop(proc)

    if 4 in opts.only:
            print(f"\n4. host pure-Python loop, agent idle vs absent, {opts.rounds} alternated "
                  f"rounds of 0.5 s")
            out = subprocess.run([sys.executable, "-c", LOOP, str(opts.rounds), "0.5"], env=env,
                                 check=True, capture_output=True, text=True).stdout
            loops = json.loads(out)
            without = statistics.median(loops["without"])
            with_agent = statistics.median(loops["with"])
            print(f"   without {without / 1e6:6.2f} M ops/s | with agent {with_agent / 1e6:6.2f} "
                  f"M ops/s | ratio {with_agent / without:.3f}")


def _spin(env: dict[str, str], rate_file: Path) -> tuple[subprocess.Popen[str], int]:
    spin = ROOT / "tests" / "targets" / "spin.py"
    proc = subprocess.Popen([sys.executable, str(spin)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**env, "PRODBUG_LISTEN": "", "RATE_FILE": str(rate_file)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        stop(proc)
        raise SystemExit(f"the spin target failed to start: {line!r}")
    return proc, int(json.loads(line[len("READY "):])["pid"])


def _window(rate_file: Path, seconds: float = 2.0) -> float:
    """The median loop rate over the next ``seconds``."""
    start = time.perf_counter() + 0.3
    time.sleep(seconds + 0.3)
    return statistics.median(_rates(rate_file, start, time.perf_counter()))


def vscode_sessions(env: dict[str, str], work: Path, sessions: int) -> None:
    import bench_vscode  # it imports this module: here, not at the top

    print(f"\n6. prodbug vscode: {sessions} sessions (initialize, attach, breakpoint, "
          f"configurationDone, disconnect)")
    m = bench_vscode.measure(env, work, sessions)
    print(f"   command to initialized: first {m['first_attach_ms']} ms (starts debugpy), "
          f"then median {m['later_attach_ms']} ms")
    print(f"   host loop, relative to before: during {m['during_ratio']:.3f}, after "
          f"{m['after_ratio']:.3f} ({m['before'] / 1e6:.2f} M it/s before)")


def _rates(path: Path, since: float, until: float) -> list[float]:
    out = []
    for line in path.read_text().splitlines():
        stamp, rate = line.split()
        if since <= float(stamp) <= until:
            out.append(float(rate))
    return out


def pdb_sessions(env: dict[str, str], work: Path, sessions: int) -> dict[str, float]:
    import pexpect

    spin = ROOT / "tests" / "targets" / "spin.py"
    never = next(n for n, t in enumerate(spin.read_text().splitlines(), 1)
                 if "interpreter shutting down" in t) + 1
    rate_file = work / "rate"
    proc, pid = _spin(env, rate_file)
    how = ["--thread", "spin"]
    print(f"\n5. prodbug pdb {' '.join(how)}: {sessions} sessions (prompt, p, c); and a "
          f"--break that never hits, armed for 2 s")
    try:
        time.sleep(2.5)
        before = _rates(rate_file, time.perf_counter() - 2.0, time.perf_counter())
        t_arm = time.perf_counter()
        armed_child = pexpect.spawn(sys.executable, [
            "-m", "prodbug", "pdb", "--pid", str(pid), "--break", f"spin.py:{never}",
            "--timeout", "60"], env=env, encoding="utf-8", timeout=90)
        armed_child.expect("waiting for a thread to reach it")
        arm_ms = (time.perf_counter() - t_arm) * 1000
        start_armed = time.perf_counter() + 0.5
        time.sleep(2.5)
        armed = _rates(rate_file, start_armed, time.perf_counter())
        armed_child.sendintr()
        armed_child.expect(pexpect.EOF)
        armed_child.close()
        to_prompt = []
        for _ in range(sessions):
            t0 = time.perf_counter()
            child = pexpect.spawn(sys.executable, ["-m", "prodbug", "pdb", "--pid", str(pid),
                                                   *how], env=env, encoding="utf-8", timeout=60)
            child.expect(r"\(Pdb\) ")
            to_prompt.append((time.perf_counter() - t0) * 1000)
            child.sendline("p 1")
            child.expect(r"\(Pdb\) ")
            child.sendline("c")
            child.expect(pexpect.EOF)
            child.close()
        start_after = time.perf_counter() + 0.5
        time.sleep(2.5)
        after = _rates(rate_file, start_after, time.perf_counter())
    finally:
        stop(proc)
    base = statistics.median(before)
    print(f"   command to prompt: median {statistics.median(to_prompt):6.1f} ms "
          f"(min {min(to_prompt):.1f}, max {max(to_prompt):.1f})")
    print(f"   host loop relative to before ({base / 1e6:.2f} M it/s): armed, not hit "
          f"{statistics.median(armed) / base:.3f} | after the sessions "
          f"{statistics.median(after) / base:.3f}")
    return {"to_prompt_ms": statistics.median(to_prompt), "first_arm_ms": arm_ms, "before": base,
            "armed": statistics.median(armed) / base, "after": statistics.median(after) / base}


def service_fanout(env: dict[str, str], creds: Credentials, rounds: int, size: int = 16) -> None:
    import signal
    import socket

    from prodbug.fanout import ask_all_through

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "PRODBUG_LISTEN": f"tcp://127.0.0.1:{port}"}
    member = ROOT / "tests" / "targets" / "member.py"
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(size):
            proc = subprocess.Popen([sys.executable, str(member)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env=env)
            procs.append(proc)
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith("READY "):
                raise SystemExit("bench: a service member failed to start")
        print(f"7. stacks over a service of {size} processes, one port:")
        with Client(f"tcp://127.0.0.1:{port}", creds, timeout=30) as client:
            pids = [a["pid"] for a in client.request("ps")["agents"]]
            # The default samples CPU for 0.1 s in every process (in parallel with --all);
            # with no sampling, 16 dumps on 2 cores are CPU-bound either way.
            for interval, n in ((0.1, max(3, rounds // 2)), (0.0, rounds)):
                args = {"cpu_interval": interval}
                fan, each = [], []
                for _ in range(n):
                    t0 = time.perf_counter()
                    result = ask_all_through(client, "stacks", args, 30)
                    fan.append((time.perf_counter() - t0) * 1000)
                    assert len(result["processes"]) == size, result["missing"]
                    t0 = time.perf_counter()
                    for pid in pids:
                        rid = client.send_request("stacks", args, pid=pid)
                        assert client.gather({rid}, 30)[rid].ok
                    each.append((time.perf_counter() - t0) * 1000)
                print(f"   --cpu-interval {interval:g}, median of {n}: --all (parallel through "
                      f"the door) {statistics.median(fan):7.1f} ms; each in turn "
                      f"{statistics.median(each):7.1f} ms; ratio "
                      f"{statistics.median(each) / statistics.median(fan):.1f}x")
        door = procs.pop(0)
        t0 = time.perf_counter()
        door.send_signal(signal.SIGKILL)
        door.wait(10)
        while True:
            try:
                with Client(f"tcp://127.0.0.1:{port}", creds, timeout=1) as client:
                    client.request("ping")
                break
            except Exception:
                if time.perf_counter() - t0 > 30:
                    raise SystemExit("bench: no member took the port over in 30 s") from None
        print(f"   kill -9 of the door -> a member answers on the port: "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    finally:
        for proc in procs:
            stop(proc)

def ssh_targets(env: dict[str, str], work: Path, client_sec: Path, server_pub: Path,
                rounds: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import sshd  # the tests' throwaway sshd

    reason = sshd.why_not()
    if reason is not None:
        print(f"\n8. ssh:// targets: skipped: {reason}")
        return
    n = max(5, rounds)
    print(f"\n8. ssh:// targets through a local sshd (median of {n} runs each, alternated)")
    (work / "sshd").mkdir()
    with sshd.running_sshd(work / "sshd") as server:
        config = server.client_config("bench")
        proc, facts = start_target(env)
        cli_env = {**env, "PRODBUG_SSH_CONFIG": str(config),
                   "PRODBUG_CLIENT_SECRET_KEY": str(client_sec),
                   "PRODBUG_SERVER_KEY": str(server_pub)}
        pid, port = str(facts["pid"]), facts["tcp"].rsplit(":", 1)[1]
        remote_cli = (f"PRODBUG_RUNTIME_DIR={env['PRODBUG_RUNTIME_DIR']} {sys.executable} -m "
                      f"prodbug stacks --pid {pid} --json --cpu-interval 0")
        ssh = ["ssh", "-F", str(config), "-p", str(server.port), "-l", server.user, "127.0.0.1"]
        prodbug = [sys.executable, "-m", "prodbug", "stacks", "--json", "--cpu-interval", "0"]
        runs: dict[str, list[float]] = {
            "ssh HOST true (the SSH floor)": [],
            "prodbug stacks ssh://HOST/PORT (TCP forward, CURVE)": [],
            "prodbug stacks ssh://HOST --pid N (lookup + socket forward)": [],
            "ssh HOST prodbug stacks --pid N (the CLI on the far side)": [],
            "prodbug stacks --pid N (local, no ssh)": []}
        argvs = [[*ssh, "true"], [*prodbug, f"{server.url}/{port}"],
                 [*prodbug, server.url, "--pid", pid], [*ssh, remote_cli],
                 [*prodbug, "--pid", pid]]
        try:
            for _ in range(n):
                for times, argv in zip(runs.values(), argvs, strict=True):
                    t0 = time.perf_counter()
                    subprocess.run(argv, env=cli_env, check=True, stdout=subprocess.DEVNULL)
                    times.append((time.perf_counter() - t0) * 1000)
        finally:
            stop(proc)
        floor = statistics.median(next(iter(runs.values())))
        for name, times in runs.items():
            print(f"   {name:62s} median {statistics.median(times):6.1f} ms "
                  f"({statistics.median(times) / floor:4.1f}x the floor)")


if __name__ == "__main__":
    raise SystemExit(main())
