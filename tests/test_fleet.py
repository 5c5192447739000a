"""Fleets: one ``prodbug stacks`` against many targets, merged; failures named, not awaited."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import Keys, Target, stop_process


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_fleet_of_twenty_with_two_unreachable_and_one_hanging(
        spawn: Callable[..., Target], agent_env: dict[str, str], base_env: dict[str, str],
        keys: Keys, tmp_path: Path) -> None:
    fleet = spawn("fleet", env={**agent_env, "FLEET_SIZE": "18"})
    agents = fleet.facts["agents"]
    hanging = agents[-1]
    stop_process(hanging["pid"])
    targets = [a["tcp"] for a in agents]
    unreachable = [f"127.0.0.1:{_closed_port()}", f"127.0.0.1:{_closed_port()}"]
    listed = tmp_path / "targets.txt"
    listed.write_text("# the last ones, from a file\n" + "\n".join(targets[10:] + unreachable)
                      + "\n")
    env = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
           "PRODBUG_SERVER_KEY": str(keys.server_public)}
    timeout = 4
    try:
        run = [sys.executable, "-m", "prodbug", "stacks", *targets[:10], "--targets",
               str(listed), "--cpu-interval", "0", "--timeout", str(timeout)]
        # A hang guard, not a measure: the bench and the closing note give the figure.
        done = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True,
                              timeout=timeout + 60, check=False)
        text = subprocess.run(run, env=env, capture_output=True, text=True,
                              timeout=timeout + 60, check=False)
    finally:
        os.kill(hanging["pid"], signal.SIGCONT)
    assert done.returncode == 3, done.stderr  # not every target answered
    entries = json.loads(done.stdout)["targets"]
    assert [e["target"] for e in entries] == targets + unreachable  # in the order given
    failed = {e["target"]: e for e in entries if not e["ok"]}
    assert set(failed) == {hanging["tcp"], *unreachable}
    assert "did not" in failed[hanging["tcp"]]["error"] or "no reply" in failed[
        hanging["tcp"]]["error"]
    assert all("connect" in failed[u]["error"] for u in unreachable)
    answered = [e["result"]["pid"] for e in entries if e["ok"]]
    assert sorted(answered) == sorted(a["pid"] for a in agents[:-1])

    assert text.returncode == 3
    assert "17 processes" in text.stdout and "3 did not answer" in text.stdout
    # The 17 identical idle threads are one stack, shown once.
    assert text.stdout.count("idle_here") == 1
    assert "17 threads in 17 processes" in text.stdout


def test_a_named_group_is_a_fleet(spawn: Callable[..., Target], agent_env: dict[str, str],
                                  base_env: dict[str, str], keys: Keys,
                                  tmp_path: Path) -> None:
    fleet = spawn("fleet", env={**agent_env, "FLEET_SIZE": "3"})
    config = tmp_path / "config.toml"
    members = ", ".join(f'"{a["tcp"]}"' for a in fleet.facts["agents"])
    config.write_text(f"[groups]\nprod = [{members}]\n")
    config.chmod(0o600)
    env = {**base_env, "PRODBUG_CONFIG": str(config),
           "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
           "PRODBUG_SERVER_KEY": str(keys.server_public)}
    done = subprocess.run([sys.executable, "-m", "prodbug", "stacks", "prod", "--json",
                           "--cpu-interval", "0"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["targets"]
    assert [e["result"]["pid"] for e in entries] == [a["pid"] for a in fleet.facts["agents"]]
