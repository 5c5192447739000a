"""`prodbug snapshot` and `prodbug logpoint` against a running host (tests/targets/probe_host.py):
the real CLI, the real agent, on whatever Python runs the suite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TARGETS, Request, Target, run_cli, wait_for

SOURCE = (TARGETS / "probe_host.py").read_text().splitlines()
LOOP = next(n for n, text in enumerate(SOURCE, 1) if "# PROBE-LOOP" in text)
HTTP = next(n for n, text in enumerate(SOURCE, 1) if "# PROBE-HTTP" in text)
STEP = next(n for n, text in enumerate(SOURCE, 1) if "# PROBE-STEP" in text)


@pytest.fixture
def host(spawn: Callable[..., Target], base_env: dict[str, str],
         request: pytest.FixtureRequest) -> Target:
    marker = request.node.get_closest_marker("heartbeat")
    return spawn("probe_host", env={**base_env, "PRODBUG_SESSION_HEARTBEAT":
                                    str(marker.args[0] if marker else 10)})


def _tracers(host: Target) -> dict[str, Any]:
    with urllib.request.urlopen(host.facts["http"] + "/tracers", timeout=30) as response:
        return dict(json.loads(response.read()))


def _armed(host: Target) -> bool:
    """Whether the host has a probe's hook in place: a monitoring tool (3.12+), or a trace
    function in the worker thread or for new threads (3.10/3.11)."""
    seen = _tracers(host)
    return bool(seen["monitoring"] or seen["worker_traced"] or seen["threading_trace"])


def _sessions(host: Target, env: dict[str, str]) -> list[dict[str, Any]]:
    info = json.loads(run_cli("info", "--pid", str(host.pid), "--json", env=env).stdout)
    return list(info["agent"]["sessions"])


def _popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "prodbug", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_snapshot_in_a_loop_and_in_a_request(host: Target, base_env: dict[str, str]) -> None:
    pid = str(host.pid)
    # A loop already running: two hits, the locals of each, the secret redacted.
    out = run_cli("snapshot", "--pid", pid, f"probe_host.py:{LOOP}", "--count", "2",
                  "--json", env=base_env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [s["number"] for s in result["snapshots"]] == [1, 2]
    counters = []
    for snap in result["snapshots"]:
        top = snap["frames"][0]
        assert (top["function"], top["lineno"], snap["thread"]["name"]) == ("work", LOOP,
                                                                            "worker")
        assert top["locals"]["label"] == "'worker-loop'"
        assert top["locals"]["token"] != "'s3cret-value'"  # redacted by its name
        counters.append(int(top["locals"]["i"]))
    assert counters[0] < counters[1]
    assert "done: 2 snapshots taken" in result["ended"]
    # Then a function the loop calls: the next probe reaches the thread the last one
    # traced (on 3.10/3.11 the loop's frame keeps the ended probe's line tracer).
    out = run_cli("snapshot", "--pid", pid, f"probe_host.py:{STEP}", "--json", "--expire",
                  "30s", env=base_env)
    assert out.returncode == 0, out.stderr
    [snap] = json.loads(out.stdout)["snapshots"]
    assert [f["function"] for f in snap["frames"][:2]] == ["step", "work"]

    # A request handler: the snapshot shows the request's locals, the request gets its 200.
    cli = _popen(base_env, "snapshot", "--pid", pid, f"probe_host.py:{HTTP}", "--locals", "1")
    try:
        assert cli.stderr is not None
        assert "armed at" in cli.stderr.readline()
        request = Request(host.facts["http"] + "/snap-me")
        request.start()
        shown, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    request.join(60)
    assert request.result == (200, "hello /snap-me")
    assert cli.returncode == 0, err
    assert f"do_GET (tests/targets/probe_host.py:{HTTP})" in shown
    assert "path = '/snap-me'" in shown
    assert "hunter2" not in shown  # user['password'], redacted

    # Expressions that could change the host, or run its code, are refused at open.
    for template in ("{step(i)}", "{(i := 3)}", "{[x for x in label]}", "{lambda: 1}"):
        refused = run_cli("logpoint", "--pid", pid, f"probe_host.py:{LOOP}", template,
                          env=base_env)
        assert refused.returncode == 1, (template, refused.stderr)
        assert "not allowed in a probe expression" in refused.stderr, refused.stderr
    refused = run_cli("snapshot", "--pid", pid, f"probe_host.py:{LOOP}", "--condition",
                      "label.__class__('x')", env=base_env)
    assert "calls are not allowed" in refused.stderr
    assert _sessions(host, base_env) == []
    assert wait_for(lambda: not _armed(host), 10)


def test_logpoint_streams_at_its_rate_then_expires(host: Target,
                                                   base_env: dict[str, str]) -> None:
    started = time.monotonic()
    out = run_cli("logpoint", "--pid", str(host.pid), f"probe_host.py:{LOOP}",
                  "i={i} {label} {token} {label[0]}", "--rate", "5/s", "--expire", "2s",
                  "--json", env=base_env)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    *lines, summary = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines, out.stderr
    for line in lines:
        i, label, token, first = line["text"].split()
        assert (label, first, line["thread"]["name"]) == ("'worker-loop'", "'w'", "worker")
        assert int(i.removeprefix("i=")) > 0 and token != "'s3cret-value'"
    # The worker reaches the line ~200 times a second: the rate limit is what bounds it
    # (5 a second over the command's whole run, plus the one-line burst).
    assert len(lines) <= 5 * elapsed + 1, (len(lines), elapsed)
    assert summary["dropped"] > 0
    assert summary["ended"].startswith("expired after 2s")
    assert _sessions(host, base_env) == []
    assert wait_for(lambda: not _armed(host), 10)


@pytest.mark.heartbeat(2)
def test_operator_killed_leaves_nothing_armed(host: Target, base_env: dict[str, str]) -> None:
    cli = _popen(base_env, "logpoint", "--pid", str(host.pid), f"probe_host.py:{LOOP}",
                 "i={i}", "--rate", "2/s")
    try:
        assert cli.stdout is not None
        assert "i=" in cli.stdout.readline()  # armed and streaming
        assert _armed(host)
        [listed] = _sessions(host, base_env)
        assert (listed["kind"], listed["where"]) == ("logpoint", f"probe_host.py:{LOOP}")
        assert listed["expires_at"] > time.time()
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate()
    # The heartbeats stop: the agent ends the session and disarms the probe.
    assert wait_for(lambda: _sessions(host, base_env) == [], 30)
    assert wait_for(lambda: not _armed(host), 10), _tracers(host)
