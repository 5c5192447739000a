"""Named targets from a config file: keys, pins, groups and refusals, with real agents."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Keys, run_cli

from prodbug import cli, named
from prodbug.connect import connect
from prodbug.errors import ConfigError
from prodbug.keys import fingerprint, load_certificate, write_certificate_pair

# ``prodbug targets`` through the real CLI once cli.py wires it; until then the same
# configure_parser/main, run the way the CLI runs them.
_RUNNER = """
import argparse, sys
from prodbug import named
from prodbug.errors import ProdbugError
parser = argparse.ArgumentParser(prog="prodbug targets")
named.configure_parser(parser)
try:
    sys.exit(named.main(parser.parse_args(sys.argv[1:])))
except ProdbugError as exc:
    print(f"prodbug targets: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def targets_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if "targets" in cli._COMMANDS:
        return run_cli("targets", *args, env=env)
    return subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_named_target_brings_its_keys_and_pins_first_use(spawn, agent_env, base_env, *,
                                                        keys: Keys, tmp_path: Path,
                                                        monkeypatch) -> None:
    target = spawn("threads", "--threads", "1", env=agent_env)
    config = write_config(tmp_path / "config.toml", f"""
[targets.api-prod]
address = "{target.host_port}"
server_key = "{keys.server_public}"
client_key = "{keys.observer}"
timeout = 7.5
""")
    env = {**base_env, "PRODBUG_CONFIG": str(config)}
    assert "PRODBUG_CLIENT_SECRET_KEY" not in env and "PRODBUG_SERVER_KEY" not in env

    result = run_cli("stacks", "api-prod", "--json", "--cpu-interval", "0", env=env)
    assert result.returncode == 0, result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    assert target.pid == proc["pid"]

    server_public = load_certificate(keys.server_public).public_key
    pins = (tmp_path / "known_agents").read_text().splitlines()
    assert [f"api-prod {fingerprint(server_public)} {server_public}"] == \
        [line for line in pins if not line.startswith("#")]

    # The config's timeout is the default one; the caller's still wins.
    monkeypatch.setenv("PRODBUG_CONFIG", str(config))
    assert named.default_timeout("api-prod") == 7.5
    with connect("api-prod") as conn:
        assert conn.timeout == 7.5
        assert target.pid == conn.client.request("info", {})["pid"]
    with connect("api-prod", timeout=3) as conn:
        assert conn.timeout == 3


def test_changed_agent_key_is_refused_until_accepted(spawn, agent_env, base_env, keys: Keys,
                                                     tmp_path: Path) -> None:
    target = spawn("threads", "--threads", "1", env=agent_env)
    other_public, _ = write_certificate_pair(tmp_path / "other", "server")
    entry = """
[targets.api]
address = "{address}"
server_key = "{key}"
client_key = "{client}"
"""
    config = write_config(tmp_path / "config.toml", entry.format(
        address=target.host_port, key=other_public, client=keys.observer))
    env = {**base_env, "PRODBUG_CONFIG": str(config)}
    accepted = targets_cli("--accept", "api", env=env)  # the key the operator had before
    assert accepted.returncode == 0, accepted.stderr

    # The service's key file is now another one: refused before anything is sent.
    write_config(config, entry.format(address=target.host_port, key=keys.server_public,
                                      client=keys.observer))
    old = fingerprint(load_certificate(other_public).public_key)
    new = fingerprint(load_certificate(keys.server_public).public_key)
    refused = run_cli("stacks", "api", "--json", env=env)
    assert refused.returncode == 2
    assert refused.stdout == ""
    (message,) = refused.stderr.splitlines()
    assert f"pinned {old}, configured now {new}" in message
    assert "prodbug targets --accept api" in message

    listed = targets_cli("--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["targets"]
    assert ("changed", old, new) == (shown["pin"], shown["pinned_fingerprint"],
                                     shown["server_key_fingerprint"])

    accepted = targets_cli("--accept", "api", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert f"pinned agent key {new} (replaces {old})" in accepted.stdout
    result = run_cli("stacks", "api", "--json", "--cpu-interval", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert [target.pid] == [p["pid"] for p in json.loads(result.stdout)["processes"]]


BAD_CONFIGS = {
    "bad TOML": ('[targets.api]\naddress = "127.0.0.1:7661"\nserver_key = \n', 0o600,
                 "api", "is not valid TOML: ", "line 3"),
    "unknown setting": ('[targets.api]\naddress = "127.0.0.1:7661"\nadress = "x"\n', 0o600,
                        "api", 'target "api": unknown setting "adress"', 'did you mean "address"'),
    "writable by others": ('[targets.api]\naddress = "127.0.0.1:7661"\n', 0o666,
                           "api", "is writable by others (mode 0666)", "chmod go-w"),
    "neither name nor TARGET": ('[targets.api]\naddress = "127.0.0.1:7661"\n', 0o600,
                                "api prod", 'TARGET "api prod" is not HOST', "nor a named target"),
    "missing key file": ('[targets.api]\naddress = "127.0.0.1:7661"\n'
                         'server_key = "nowhere/server.key"\n', 0o600,
                         "api", 'target "api"', "nowhere/server.key does not exist"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configs_are_refused_in_one_line(base_env, tmp_path: Path, case: str) -> None:
    text, mode, name, *expected = BAD_CONFIGS[case]
    config = write_config(tmp_path / "config.toml", text)
    config.chmod(mode)
    result = run_cli("stacks", name, env={**base_env, "PRODBUG_CONFIG": str(config)})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    for part in expected:
        assert part in line


def test_groups_resolve_and_are_checked(base_env, tmp_path: Path, monkeypatch) -> None:
    config = write_config(tmp_path / "config.toml", """
[targets.api-prod]
address = "ssh://deploy@api-7f9"
[targets.worker-prod]
address = "10.0.0.7:7661"
[groups]
prod = ["api-prod", "worker-prod", "10.0.0.9"]
""")
    monkeypatch.setenv("PRODBUG_CONFIG", str(config))
    assert named.resolve_group("prod") == ["api-prod", "worker-prod", "10.0.0.9"]
    assert named.resolve_group("api-prod") is None
    assert named.lookup("prod") is None
    assert named.lookup("worker-prod").address == "10.0.0.7:7661"  # type: ignore[union-attr]

    listed = targets_cli("--json", env={**base_env, "PRODBUG_CONFIG": str(config)})
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["groups"] == {"prod": ["api-prod", "worker-prod", "10.0.0.9"]}
    assert [t["groups"] for t in shown["targets"]] == [["prod"], ["prod"]]

    # stacks makes a group a fleet (tests/test_fleet.py); one-target commands refuse it.
    one = run_cli("info", "prod", env={**base_env, "PRODBUG_CONFIG": str(config)})
    assert one.returncode == 2
    assert '"prod" is a group of targets' in one.stderr

    write_config(config, '[groups]\nall = ["prod"]\nprod = ["10.0.0.9"]\n')
    with pytest.raises(ConfigError, match='group "all": "prod" is a group; groups do not nest'):
        named.resolve_group("all")


def test_config_path_defaults_beside_the_keys(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PRODBUG_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tmp_path / ".config/prodbug/config.toml" == named.config_path()
    assert named.load_config().targets == {}  # no file: no names, every HOST as before


@pytest.mark.skipif("targets" not in cli._COMMANDS,
                    reason="prodbug/cli.py does not wire named targets yet")
def test_named_timeout_is_the_default_and_timeout_flag_wins(base_env, keys: Keys,
                                                            tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP, never speaks: no handshake, ever
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        config = write_config(tmp_path / "config.toml", f"""
[targets.quiet]
address = "127.0.0.1:{silent.getsockname()[1]}"
server_key = "{keys.server_public}"
client_key = "{keys.observer}"
timeout = 0.3
""")
        env = {**base_env, "PRODBUG_CONFIG": str(config)}
        for flags, said in (((), "within 0.3s"), (("--timeout", "0.2"), "within 0.2s")):
            result = run_cli("stacks", "quiet", *flags, env=env)
            assert result.returncode == 3
            assert said in result.stderr
