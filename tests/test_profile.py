"""``prodbug profile``: the sampler in real processes, its outputs, and its end.

tests/targets/profile_hot.py has a thread spinning in ``hot_loop()`` -> ``burn()`` and one
that mostly sleeps: ``burn`` must come out on top by its own samples, whatever the format.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Keys, Target, free_port, run_cli, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _observer(env: dict[str, str], keys: Keys) -> dict[str, str]:
    return {**env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


def _leaf_function(stack: str) -> str:
    """"burn" of "...;path/profile_hot.py:burn:23"."""
    return stack.rsplit(";", 1)[-1].rsplit(":", 2)[-2]


def _check_speedscope(doc: dict[str, Any]) -> None:
    """The structure speedscope's schema asks of a file of sampled profiles."""
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert frames and all(isinstance(f["name"], str) for f in frames)
    assert doc["profiles"]
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled"
        assert isinstance(profile["name"], str)
        assert profile["unit"] in ("none", "nanoseconds", "microseconds", "milliseconds",
                                   "seconds", "bytes")
        assert profile["startValue"] <= profile["endValue"]
        assert len(profile["samples"]) == len(profile["weights"])
        assert all(0 <= i < len(frames) for stack in profile["samples"] for i in stack)
    names = {frames[stack[-1]]["name"] for profile in doc["profiles"]
             for stack in profile["samples"]}
    assert "burn" in names


def _render_in_chromium(svg: Path, tmp_path: Path) -> dict[str, Any]:
    """Open the SVG in headless Chromium: its rects and titles as the DOM has them, and how
    many pixels came out coloured when the browser drew it."""
    page = tmp_path / "page.html"
    page.write_text(
        '<!doctype html><html><body><pre id="result">pending</pre><div id="box">'
        + svg.read_text() + """</div><script>
const svg = document.querySelector('#box svg');
const rects = svg.querySelectorAll('rect').length;
const titles = [...svg.querySelectorAll('title')].map(t => t.textContent);
const out = (extra) => document.getElementById('result').textContent =
  JSON.stringify({rects, titles, ...extra});
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let coloured = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3] > 0 && (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 220)) coloured++;
  out({coloured, width: img.width, height: img.height});
};
img.onerror = () => out({error: 'the browser could not load the SVG as an image'});
img.src = URL.createObjectURL(new Blob([new XMLSerializer().serializeToString(svg)],
                                       {type: 'image/svg+xml'}));
</script></body></html>""")
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=90, check=False)
    match = re.search(r'<pre id="result">([^<]*)</pre>', done.stdout)
    assert match is not None, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(match[1].replace("&quot;", '"').replace("&amp;", "&"))
    return result


def test_the_hot_function_comes_out_on_top(spawn: Callable[..., Target],
                                           agent_env: dict[str, str], keys: Keys,
                                           tmp_path: Path) -> None:
    # Two processes of one service on one port: the first is its door.
    service_env = {**agent_env, "PRODBUG_SESSION_HEARTBEAT": "10",
                   "PRODBUG_LISTEN": f"tcp://127.0.0.1:{free_port()}"}
    target = spawn("profile_hot", env=service_env)
    member = spawn("profile_hot", env=service_env)
    env = _observer(agent_env, keys)  # an observer key is enough
    svg, speed = tmp_path / "flame.svg", tmp_path / "profile.speedscope.json"

    # The default table: burn first by its own samples; the hottest stack ends in it.
    table = run_cli("profile", target.host_port, "--seconds", "1", "--svg", str(svg),
                    "--speedscope", str(speed), env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "FUNCTION" in line)
    assert lines[header + 1].split()[4] == "burn", table.stdout
    assert "profile_hot.py:burn:" in lines[lines.index(next(
        ln for ln in lines if ln.startswith("hottest stack"))) + 5], table.stdout
    _check_speedscope(json.loads(speed.read_text()))

    # --all (every process behind the door at once), as collapsed stacks: "root;...;leaf
    # COUNT" lines, the most sampled (burn's) first.
    collapsed = run_cli("profile", target.host_port, "--all", "--seconds", "0.3",
                        "--collapsed", env=env)
    assert collapsed.returncode == 0, collapsed.stderr
    assert "profiling 2 processes" in collapsed.stderr
    parsed = []
    for line in collapsed.stdout.splitlines():
        match = re.fullmatch(r"(\S.*) (\d+)", line)
        assert match is not None, line
        assert all(match[1].split(";")), line
        parsed.append((match[1], int(match[2])))
    assert parsed and _leaf_function(parsed[0][0]) == "burn", collapsed.stdout
    assert parsed[0][0].split(";")[-2].rsplit(":", 2)[-2] == "hot_loop"

    # One thread only, in each process: the sleeper's stacks, none of burn's.
    only = run_cli("profile", target.host_port, "--all", "--seconds", "0.3", "--thread",
                   "sleepy", "--idle", "--json", env=env)
    assert only.returncode == 0, only.stderr
    both = json.loads(only.stdout)
    assert sorted(p["pid"] for p in both["processes"]) == sorted([target.pid, member.pid])
    for process in both["processes"]:
        assert [t["name"] for t in process["threads"]] == ["sleepy"]
    assert {_leaf_function(s["stack"]) for s in both["merged"]} == {"nap"}

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test installs it where it can): the "
                    "SVG flame graph was written but not opened in a browser")
    shown = _render_in_chromium(svg, tmp_path)
    assert "error" not in shown, shown
    assert shown["rects"] > 5
    assert any(":burn:" in title for title in shown["titles"]), shown["titles"]
    assert shown["coloured"] > 10_000, shown  # a drawn graph, not a blank page


def _sessions(info: dict[str, Any]) -> list[Any]:
    agent = info.get("agent", info)
    return list(agent.get("sessions", []))


def test_an_operator_killed_mid_profile_leaves_no_sampler(spawn: Callable[..., Target],
                                                          base_env: dict[str, str]) -> None:
    target = spawn("profile_hot", env={**base_env, "PRODBUG_SESSION_HEARTBEAT": "4"})
    pid = str(target.pid)
    assert target.proc.stdin is not None

    def threads() -> list[str]:
        count = sum(ln.startswith("THREADS ") for ln in target.output)
        assert target.proc.stdin is not None
        target.proc.stdin.write("threads\n")
        target.proc.stdin.flush()
        assert wait_for(lambda: sum(ln.startswith("THREADS ") for ln in target.output)
                        > count, 10)
        last = [ln for ln in target.output if ln.startswith("THREADS ")][-1]
        names: list[str] = json.loads(last[len("THREADS "):])
        return names

    def info() -> dict[str, Any]:
        done = run_cli("info", "--pid", pid, "--json", env=base_env)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    cli = subprocess.Popen([sys.executable, "-m", "prodbug", "profile", "--pid", pid,
                            "--seconds", "120"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=base_env)
    try:
        assert wait_for(lambda: [s["mode"] for s in _sessions(info())] == ["profile"], 30)
        assert "prodbug-profiler" in threads()
        cli.send_signal(signal.SIGKILL)
        cli.wait(10)
        # Gone within its heartbeat: no session, no sampler, and the agent still answers.
        assert wait_for(lambda: not _sessions(info()), 20)
        assert wait_for(lambda: "prodbug-profiler" not in threads(), 10)
        assert "hot" in threads()
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate(timeout=10)
