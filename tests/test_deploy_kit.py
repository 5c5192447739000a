"""agent/: every example the README points at works, or says what the README relies on."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import yaml
from conftest import Keys, OtherUser, run_cli, short_tmp, wait_for

from prodbug.config import _ENV, parse_listen
from prodbug.keys import check_private_permissions
from prodbug.run import BOOTSTRAP_DIR, RUN_ENV

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "agent"
KNOWN = set(_ENV.values()) | set(RUN_ENV) | {"PRODBUG_AUTOSTART"}


def test_the_kits_sitecustomize_is_the_bootstrap() -> None:
    assert (KIT / "sitecustomize" / "sitecustomize.py").read_bytes() == \
        (BOOTSTRAP_DIR / "sitecustomize.py").read_bytes()


def test_the_kits_sitecustomize_without_prodbug_run(base_env: dict[str, str]) -> None:
    code = ("import sys; from prodbug.agent import current_agent; "
            "print(current_agent() is not None)")
    probe = "import sys; print('prodbug' in sys.modules)"
    env = {**base_env, "PYTHONPATH": str(KIT / "sitecustomize")}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**env, "PRODBUG_AUTOSTART": "1"}, timeout=60, check=False)
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert (on.stdout, on.stderr, off.stdout, off.stderr) == ("True\n", "", "False\n", "")


def test_gunicorn_conf_starts_the_master_and_workers(base_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", str(KIT / "gunicorn.conf.py"),
         "--workers", "2", "--bind", "127.0.0.1:0", "--chdir", str(KIT / "examples"),
         "wsgi_app:app"], env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        def registered() -> bool:
            listed = run_cli("ps", "--json", env=base_env).stdout
            workers = {p.pid for p in psutil.Process(proc.pid).children()}
            return len(workers) == 2 and all(
                re.search(rf'"pid": {pid},', listed) for pid in {proc.pid, *workers})
        assert wait_for(registered, 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=15)


def _systemd(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines per key, in order (systemd allows a key many times)."""
    section = ""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def test_systemd_drop_in(keys: Keys, base_env: dict[str, str]) -> None:
    unit = _systemd(KIT / "systemd" / "prodbug.conf")
    env = dict(line.split("=", 1) for line in unit["Service.Environment"])
    assert set(env) <= KNOWN
    assert {"PRODBUG_LISTEN", "PRODBUG_SERVER_SECRET_KEY", "PRODBUG_AUTHORIZED_KEYS"} <= set(env)
    host, port, loopback = parse_listen(env["PRODBUG_LISTEN"])
    assert (host, loopback) == ("127.0.0.1", True)
    # The unit's own ExecStart is cleared first, then replaced by one behind prodbug run.
    first, command = unit["Service.ExecStart"]
    argv = shlex.split(command)
    assert first == "" and argv[0].endswith("/prodbug") and argv[1:3] == ["run", "--"]
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # The same settings, with this test's key files, pass prodbug run's checks.
    real = {**env, "PRODBUG_SERVER_SECRET_KEY": str(keys.server_secret),
            "PRODBUG_AUTHORIZED_KEYS": str(keys.authorized),
            "PRODBUG_LISTEN": f"tcp://127.0.0.1:{port}"}
    ran = run_cli("run", "--", "true", env={**base_env, **real})
    assert (ran.returncode, ran.stderr) == (0, "")


def _by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def test_kubernetes_example(tmp_path: Path) -> None:
    text = (KIT / "kubernetes.yaml").read_text()
    pod = yaml.safe_load(text)["spec"]["template"]["spec"]
    api = _by_name(pod["containers"], "api")
    assert api["command"][:3] == ["prodbug", "run", "--"]
    env = {e["name"]: e["value"] for e in api["env"]}
    assert set(env) <= KNOWN
    host, port, loopback = parse_listen(env["PRODBUG_LISTEN"])
    assert (host, port, loopback) == ("127.0.0.1", 7661, True)
    assert f"kubectl port-forward deploy/api {port}:{port}" in text
    assert not any(p.get("containerPort") == port for p in api.get("ports", []))

    # The operators' public keys: straight from the read-only Secret mount.
    secret_volume = _by_name(pod["volumes"], "prodbug-secret")["secret"]
    mounts = {m["name"]: m for m in api["volumeMounts"]}
    assert mounts["prodbug-secret"]["readOnly"] is True
    items = {i["key"]: i["path"] for i in secret_volume["items"]}
    authorized = Path(mounts["prodbug-secret"]["mountPath"]) / "authorized"
    assert env["PRODBUG_AUTHORIZED_KEYS"] == str(authorized)
    assert any(Path(path).parent.name == "authorized" and path.endswith(".key")
               for path in items.values())
    # The secret key: fsGroup makes the Secret's files 0440, which the agent refuses ...
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert secret_volume["defaultMode"] == 0o440
    refused = tmp_path / "refused.key_secret"
    refused.write_text("x")
    refused.chmod(secret_volume["defaultMode"])
    try:
        check_private_permissions(refused)
    except Exception as exc:
        assert "chmod 600" in str(exc)
    else:
        raise AssertionError("a 0440 key was accepted: the init container may go")
    # ... so the init container copies it, as the service's user, to a 0400 file in a
    # memory-backed emptyDir that the service mounts read-only.
    init = _by_name(pod["initContainers"], "prodbug-key")
    key = Path(env["PRODBUG_SERVER_SECRET_KEY"])
    assert mounts["prodbug-key"] == {"name": "prodbug-key", "mountPath": str(key.parent),
                                     "readOnly": True}
    assert _by_name(pod["volumes"], "prodbug-key")["emptyDir"]["medium"] == "Memory"
    assert f"chmod 0400 {key}" in init["command"][-1] and "server.key_secret" in items


def test_kubernetes_init_container_script(other_user: OtherUser) -> None:
    """Its script, run as a user of its own on copies of the mounts, writes a key the agent
    accepts, and again when a restarted pod finds the emptyDir still full."""
    pod = yaml.safe_load((KIT / "kubernetes.yaml").read_text())["spec"]["template"]["spec"]
    init = _by_name(pod["initContainers"], "prodbug-key")
    env = {e["name"]: e["value"] for e in _by_name(pod["containers"], "api")["env"]}
    key = Path(env["PRODBUG_SERVER_SECRET_KEY"])
    with short_tmp("pbk-", 0o755) as root:
        secret_dir, key_dir = root / "secret", root / "key"
        secret_dir.mkdir()
        key_dir.mkdir()
        (secret_dir / "server.key_secret").write_text("secret")
        (secret_dir / "server.key_secret").chmod(0o440)  # as fsGroup leaves it
        for path in (secret_dir, secret_dir / "server.key_secret"):
            os.chown(path, 0, other_user.gid)
        os.chown(key_dir, other_user.uid, other_user.gid)
        script = init["command"][-1].replace(str(key.parent), str(key_dir)).replace(
            _by_name(init["volumeMounts"], "prodbug-secret")["mountPath"], str(secret_dir))
        for _ in range(2):
            done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                  user=other_user.uid, group=other_user.gid, extra_groups=[],
                                  timeout=30, check=False)
            assert (done.returncode, done.stderr) == (0, "")
            written = key_dir / key.name
            assert written.stat().st_uid == other_user.uid
            check_private_permissions(written)
        assert written.read_text() == "secret"


def test_readme_names_every_file_of_the_kit() -> None:
    readme = (KIT / "README.md").read_text()
    files = {p.relative_to(KIT).as_posix() for p in KIT.rglob("*")
             if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts}
    assert {f for f in files if f"`{f}`" not in readme} == set()
