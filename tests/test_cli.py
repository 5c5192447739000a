"""The real CLI against real target processes over real CURVE TCP and ipc."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Keys, Target, run_cli

from prodbug.keys import load_certificate

THREADS = 50
INNERMOST = ["sleeper", "lock_waiter", "selector"]  # tests/targets/threads.py KINDS


def _client_env(env: dict[str, str], keys: Keys, secret: Path) -> dict[str, str]:
    return {**env, "PRODBUG_CLIENT_SECRET_KEY": str(secret),
            "PRODBUG_SERVER_KEY": str(keys.server_public)}


def _check_fifty(dump: dict[str, object], pid: int) -> None:
    (proc,) = dump["processes"]  # type: ignore[misc]
    assert proc["pid"] == pid
    workers = {t["name"]: t for t in proc["threads"] if t["name"].startswith("worker-")}
    assert sorted(workers) == sorted(f"worker-{i}" for i in range(THREADS))
    for i in range(THREADS):
        thread = workers[f"worker-{i}"]
        assert thread["frames"][0]["function"] == INNERMOST[i % 3], thread
        assert thread["frames"][0]["filename"].endswith("threads.py")
        assert thread["daemon"] is True
        assert isinstance(thread["native_id"], int)
        assert thread["state"] == "waiting"
        assert {"filename", "lineno", "function", "line"} <= set(thread["frames"][0])
    (agent,) = [t for t in proc["threads"] if t.get("agent")]
    assert agent["name"] == "prodbug-agent"


def test_stacks_json_over_curve_tcp_and_pid(spawn, agent_env, base_env, keys: Keys) -> None:
    target: Target = spawn("threads", "--threads", str(THREADS), env=agent_env)
    env = _client_env(base_env, keys, keys.observer)
    result = run_cli("stacks", target.host_port, "--json", env=env)
    assert result.returncode == 0, result.stderr
    _check_fifty(json.loads(result.stdout), target.pid)

    result = run_cli("stacks", "--pid", str(target.pid), "--json", env=base_env)
    assert result.returncode == 0, result.stderr
    _check_fifty(json.loads(result.stdout), target.pid)


def test_stacks_human_output_shows_threads_and_source(spawn, base_env) -> None:
    target = spawn("threads", "--threads", "3", "--spin", env=base_env)
    result = run_cli("stacks", "--pid", str(target.pid), env=base_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Process {target.pid}:" in out
    assert "Thread " in out and "'worker-1'" in out
    assert "lock_waiter (" in out and "held.acquire()" in out
    spinner = next(line for line in out.splitlines() if "'spinner'" in line)
    assert "running" in spinner
    assert "\x1b[" not in out  # not a tty: no colour


def test_info_and_ps_and_no_target(spawn, base_env) -> None:
    target = spawn("threads", "--threads", "2", env=base_env)
    info = run_cli("info", "--json", env=base_env)  # exactly one local agent: that one
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["pid"] == target.pid
    assert facts["agent"]["ipc_endpoint"] == target.facts["ipc"]
    assert facts["rss_bytes"] > 0 and facts["threads"] >= 3
    assert facts["debug"]["debugpy_loaded"] is False

    ps = run_cli("ps", "--json", env=base_env)
    assert [a["pid"] for a in json.loads(ps.stdout)["agents"]] == [target.pid]
    table = run_cli("ps", env=base_env).stdout
    assert str(target.pid) in table and "threads.py" in table

    second = spawn("threads", "--threads", "1", env=base_env)
    ambiguous = run_cli("info", env=base_env)
    assert ambiguous.returncode == 2
    assert "--pid" in ambiguous.stderr and str(second.pid) in ambiguous.stderr


def test_unauthorized_key_gets_nothing(spawn, agent_env, base_env, keys: Keys,
                                       tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    target = spawn("threads", "--threads", "1", env={**agent_env,
                                                     "PRODBUG_AUDIT_LOG": str(audit)})
    from prodbug.client import Client, Credentials
    from prodbug.errors import AuthError

    stranger = Credentials(load_certificate(keys.stranger),
                           load_certificate(keys.server_public).public_key)
    replies = 0
    for _ in range(100):
        with Client(target.tcp, stranger, timeout=30) as client:
            try:
                client.request("ping")
                replies += 1
            except AuthError as exc:
                assert "not authorized" in str(exc)
    assert replies == 0
    denied = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len([r for r in denied if r["event"] == "denied"]) == 100
    assert not [r for r in denied if r["event"] == "request"]

    # A generous --timeout: the CLI must not need it to say "not authorized".
    env = _client_env(base_env, keys, keys.stranger)
    result = run_cli("stacks", target.host_port, "--timeout", "600", env=env, timeout=60)
    assert result.returncode == 4
    assert "not authorized" in result.stderr
    assert result.stdout == ""


def test_wrong_server_key_and_refused_connection(spawn, agent_env, base_env, keys: Keys) -> None:
    target = spawn("threads", "--threads", "1", env=agent_env)
    env = {**_client_env(base_env, keys, keys.observer),
           "PRODBUG_SERVER_KEY": str(keys.observer.with_suffix(".key"))}
    result = run_cli("info", target.host_port, "--timeout", "600", env=env, timeout=60)
    assert result.returncode == 4
    assert "server key does not match" in result.stderr

    target.proc.kill()
    target.proc.wait(10)
    env = _client_env(base_env, keys, keys.observer)
    result = run_cli("info", target.host_port, "--timeout", "600", env=env, timeout=60)
    assert result.returncode == 3
    assert "connection refused" in result.stderr


def test_roles_observer_is_denied_debugger_commands(spawn, agent_env, base_env,
                                                    keys: Keys) -> None:
    target = spawn("threads", "--threads", "1", env=agent_env)
    observer = run_cli("audit", target.host_port, env=_client_env(base_env, keys, keys.observer))
    assert observer.returncode == 4
    assert "needs the debugger role" in observer.stderr and '"alice" is observer' in observer.stderr
    debugger = run_cli("audit", target.host_port, "--json",
                       env=_client_env(base_env, keys, keys.debugger))
    assert debugger.returncode == 0, debugger.stderr
    records = json.loads(debugger.stdout)["records"]
    assert [(r["key"], r["cmd"], r["outcome"], r["pid"]) for r in records] == [
        ("alice", "audit", "forbidden", target.pid)]
    assert float(records[0]["duration_ms"]) >= 0 and records[0]["time"]


#: Arguments that would be valid for a debugger key: the refusal must be about the role.
_DEBUGGER_ARGS: dict[str, dict[str, object]] = {
    "audit": {},
    "pdb.open": {"thread": "worker-0"},
    "session.input": {"session": "s1", "data": "p 1\n"},
    "dap.open": {"confirm": True},
    "dap.connect": {"session": "s1"},
    "dap.send": {"session": "s1", "data": ""},
    "dap.disconnect": {"session": "s1"},
    "probe.open": {"kind": "snapshot", "file": "threads.py", "line": 30},
}


def test_an_observer_key_is_refused_every_debugger_command(spawn, agent_env, keys: Keys) -> None:
    """Every command the protocol reserves for debuggers, and unredacted locals, are refused
    to an observer before anything runs: no session opens, no debugpy starts."""
    from prodbug.client import Client, Credentials
    from prodbug.errors import AuthError
    from prodbug.protocol import COMMANDS

    target = spawn("threads", "--threads", "1", env=agent_env)
    debugger_only = sorted(c for c, role in COMMANDS.items() if role == "debugger")
    assert debugger_only == sorted(_DEBUGGER_ARGS)  # a new command needs a line here
    server = load_certificate(keys.server_public).public_key
    with Client(target.tcp, Credentials(load_certificate(keys.observer), server),
                timeout=20) as observer:
        for cmd in debugger_only:
            with pytest.raises(AuthError, match="needs the debugger role"):
                observer.request(cmd, _DEBUGGER_ARGS[cmd])
        with pytest.raises(AuthError, match="debugger role"):
            observer.request("stacks", {"cpu_interval": 0, "locals": 1, "redact": False})
        info = observer.request("info")  # alive, answering, and nothing was opened
    assert info["agent"]["debugpy"] == "off", info
    assert not info["debug"]["trace_function"] and not info["debug"]["monitoring_tools"], info
    with Client(target.tcp, Credentials(load_certificate(keys.debugger), server),
                timeout=20) as debugger:
        records = debugger.request("audit", {"limit": 50})["records"]
    refused = [(r["cmd"], r["outcome"]) for r in records if r["key"] == "alice"]
    assert refused[:len(debugger_only) + 1] == [
        *((c, "forbidden") for c in debugger_only), ("stacks", "forbidden")]


def test_cli_errors_are_one_line_with_exit_codes(base_env, tmp_path: Path, keys: Keys) -> None:
    cases = [
        (["stacks", "--pid", "999999999"], 3, "no process 999999999"),
        (["stacks"], 3, "no local agents"),
        (["stacks", "4242"], 2, "--pid 4242"),
        (["stacks", "ssh://-oProxyCommand=x"], 2, "is not ssh://[USER@]HOST"),
        (["stacks", "localhost:7661"], 2, "PRODBUG_SERVER_KEY"),
        (["stacks", "ipc:///nonexistent/1.sock"], 3, "no agent socket"),
    ]
    env = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer), "HOME": str(tmp_path)}
    for argv, code, text in cases:
        result = run_cli(*argv, env=env)
        assert (result.returncode, result.stdout) == (code, ""), (argv, result.stderr)
        assert text in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    loose = tmp_path / "loose.key_secret"
    loose.write_text(keys.observer.read_text())
    os.chmod(loose, 0o644)
    result = run_cli("stacks", "localhost", "--key", str(loose), "--server-key",
                     str(keys.server_public), env=env)
    assert result.returncode == 2
    assert f"chmod 600 {loose}" in result.stderr


def test_keygen_and_help(tmp_path: Path, base_env) -> None:
    result = run_cli("keygen", "--name", "ops", "--dir", str(tmp_path), "--role", "debugger",
                     env=base_env)
    assert result.returncode == 0, result.stderr
    assert "PRODBUG_AUTHORIZED_KEYS" in result.stdout
    assert os.stat(tmp_path / "ops.key_secret").st_mode & 0o777 == 0o600
    assert load_certificate(tmp_path / "ops.key").metadata["role"] == "debugger"
    again = run_cli("keygen", "--name", "ops", "--dir", str(tmp_path), env=base_env)
    assert again.returncode == 2 and "--force" in again.stderr
    helptext = run_cli("stacks", "--help", env=base_env).stdout
    assert "exit codes:" in helptext and "not authorized" in helptext
