"""The agent's life: start failures, import-time start, idempotence, exit, fork."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Keys, run_cli, stop_target

from prodbug.agent import current_agent, start_agent
from prodbug.errors import ConfigError


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.fixture
def tcp_settings(keys: Keys, runtime_dir: Path) -> dict[str, object]:
    return {"listen": "tcp://127.0.0.1:0", "server_secret_key": keys.server_secret,
            "authorized_keys": keys.authorized, "runtime_dir": runtime_dir}


def test_port_taken(tcp_settings: dict[str, object], runtime_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="in use"):
            start_agent(**{**tcp_settings, "listen": f"tcp://127.0.0.1:{port}"})
    assert current_agent() is None
    assert list(runtime_dir.iterdir()) == []  # the ipc side was undone too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server_secret_key": "/nonexistent/server.key_secret"}, "does not exist"),
        ({"authorized_keys": "/nonexistent/authorized"}, "does not exist"),
        ({"server_secret_key": None}, "PRODBUG_SERVER_SECRET_KEY"),
        ({"authorized_keys": None}, "allow-list"),
        ({"listen": "127.0.0.1:7661"}, "tcp://HOST:PORT"),
        ({"listen": "tcp://127.0.0.1:99999"}, "out of range"),
        ({"listen": "tcp://0.0.0.0:0"}, "PRODBUG_ALLOW_REMOTE=1"),
        ({"listen": "tcp://203.0.113.7:0", "allow_remote": True}, "cannot listen"),
        ({"bogus": 1}, "unknown agent setting"),
    ],
)
def test_start_failures_raise_config_error(tcp_settings: dict[str, object],
                                           change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        start_agent(**{**tcp_settings, **change})
    assert "\n" not in str(info.value)
    assert current_agent() is None


def test_loose_secret_key_is_refused(tcp_settings: dict[str, object], keys: Keys,
                                     tmp_path: Path) -> None:
    loose = tmp_path / "server.key_secret"
    loose.write_text(keys.server_secret.read_text())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {loose}"):
        start_agent(**{**tcp_settings, "server_secret_key": loose})


def test_import_time_start_failure_leaves_the_host_running(agent_env: dict[str, str]) -> None:
    env = {**agent_env, "PRODBUG_SERVER_SECRET_KEY": "/nonexistent.key_secret"}
    result = _python(
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(name)s %(message)s')\n"
        "import prodbug.autostart\n"
        "print('host is up')\n", env)
    assert result.returncode == 0
    assert "prodbug.agent prodbug agent not started: secret key file" in result.stdout
    assert "host is up" in result.stdout
    assert result.stderr == ""


def test_start_twice_restart_and_clean_exit(agent_env: dict[str, str], runtime_dir: Path) -> None:
    # No logging configured in the host: the agent must still print nothing at all.
    result = _python(
        "import json, prodbug\n"
        "from prodbug.client import Client\n"
        "a = prodbug.start_agent()\n"
        "b = prodbug.start_agent(listen=None)\n"
        "with Client(a.ipc_endpoint) as c:\n"
        "    c.send_raw(b'garbage')\n"
        "    assert c.receive_raw(30) is not None\n"
        "a.stop()\n"
        "c = prodbug.start_agent()\n"
        "print(json.dumps([a is b, a.running, c is not a, c.running, c.tcp_endpoint]))\n",
        agent_env)
    assert result.stderr == ""
    same, first_running, fresh, second_running, tcp = json.loads(result.stdout)
    assert (same, first_running, fresh, second_running) == (True, False, True, True)
    assert tcp.startswith("tcp://127.0.0.1:")
    assert result.returncode == 0
    assert list(runtime_dir.iterdir()) == []  # endpoint files removed at exit


def test_forked_child_runs_its_own_agent(spawn, agent_env: dict[str, str],
                                         base_env: dict[str, str], keys: Keys) -> None:
    target = spawn("forking", env=agent_env)
    child = target.facts["child"]
    assert target.facts["child_tcp"] is None  # the parent keeps the TCP port
    ps = json.loads(run_cli("ps", "--json", env=base_env).stdout)
    assert sorted(a["pid"] for a in ps["agents"]) == sorted([target.pid, child])
    result = run_cli("stacks", "--pid", str(child), "--json", env=base_env)
    assert result.returncode == 0, result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    assert proc["pid"] == child
    worker = next(t for t in proc["threads"] if t["name"] == "child-worker")
    assert worker["frames"][0]["function"] == "child_loop"
    # The parent still answers after the fork, over ipc and over the TCP port it kept, as
    # itself (not as the child, whose thread it does not have).
    result = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert result.returncode == 0, result.stderr
    (parent,) = json.loads(result.stdout)["processes"]
    assert parent["pid"] == target.pid
    assert "child-worker" not in {t["name"] for t in parent["threads"]}
    tcp_env = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
               "PRODBUG_SERVER_KEY": str(keys.server_public)}
    result = run_cli("info", target.tcp.removeprefix("tcp://"), "--json", env=tcp_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == target.pid
    assert stop_target(target) == 0


def test_runtime_dir_open_to_others_is_refused_not_changed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ConfigError, match=f"chmod 700 {shared}"):
        start_agent(runtime_dir=shared)
    assert shared.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(("setting", "value"), [("listen", 7661), ("max_message_size", "1M"),
                                                ("allow_remote", "yes")])
def test_override_of_the_wrong_type(setting: str, value: object, runtime_dir: Path) -> None:
    with pytest.raises(ConfigError, match=setting):
        start_agent(runtime_dir=runtime_dir, **{setting: value})


def test_every_protocol_command_has_a_handler_and_no_more(agent_env: dict[str, str]) -> None:
    result = _python(
        "import json, prodbug\n"
        "from prodbug import protocol\n"
        "a = prodbug.start_agent()\n"
        "print(json.dumps([sorted(a.handler_names()), sorted(protocol.COMMANDS)]))\n",
        agent_env)
    handlers, commands = json.loads(result.stdout)
    assert handlers == commands
