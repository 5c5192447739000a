"""Looking at a process never runs its code, and never shows its secrets to an observer.

tests/targets/proxies.py holds lazy proxies, trapping metaclasses, trapping subclasses of
built-ins, a proxy-wrapped lock, a Thread subclass with trapping properties and an asyncio
task whose coroutine is a proxy; every trap records that it ran and then blocks forever.
The real CLI dumps it with locals, as an observer over CURVE TCP and locally by pid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Keys, Target, run_cli

#: One marker inside each secret the target holds (tests/targets/proxies.py keep_secrets).
SECRET_MARKERS = [f"Zq{n}" for n in range(81, 93)] + ["ZQ93"]


@pytest.fixture
def proxies(spawn: Any, agent_env: dict[str, str], tmp_path: Path) -> tuple[Target, Path]:
    mark = tmp_path / "host-code-ran"
    return spawn("proxies", env={**agent_env, "PROXIES_MARK": str(mark)}), mark


def _stacks(env: dict[str, str], mark: Path, *args: str) -> tuple[dict[str, Any], str]:
    # A generous request timeout: if host code ran in the agent, it is blocked for good.
    result = run_cli("stacks", *args, "--locals", "3", "--json", "--cpu-interval", "0",
                     "--timeout", "30", env=env)
    assert (result.returncode, _ran(mark)) == (0, ""), result.stderr
    (proc,) = json.loads(result.stdout)["processes"]
    return proc, result.stdout


def _ran(mark: Path) -> str:
    return mark.read_text() if mark.exists() else ""


def _frame(proc: dict[str, Any], thread: str, function: str) -> dict[str, Any]:
    (found,) = [t for t in proc["threads"] if t["name"] == thread]
    return next(f for f in found["frames"] if f["function"].split(".")[-1] == function)


def _held(proc: dict[str, Any], thread: str, function: str) -> dict[str, str]:
    """The locals a target's function holds (without the ``ready`` Event every one gets)."""
    shown = dict(_frame(proc, thread, function)["locals"])
    shown.pop("ready")
    return shown


def _thread(proc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [t for t in proc["threads"] if t["name"] == name]
    return found  # type: ignore[no-any-return]


def test_observer_dump_runs_no_host_code_and_shows_no_secrets(
        proxies: tuple[Target, Path], base_env: dict[str, str], keys: Keys) -> None:
    target, mark = proxies
    observer = {**base_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
                "PRODBUG_SERVER_KEY": str(keys.server_public)}
    proc, raw = _stacks(observer, mark, target.host_port)
    assert _ran(mark) == ""
    assert proc["locals_redacted"] is True

    shown = _frame(proc, "lazy-locals", "hold_proxies")["locals"]
    at = r"object at 0x[0-9a-f]+>"
    lazy = "LazyObject(_setupfunc=<function hold_proxies.<locals>.<lambda>>, _wrapped=None)"
    assert shown["lazy"] == lazy
    assert shown["getattribute"] == "GetattributeTrap(size=3)"
    assert re.fullmatch(rf"<__main__\.DictPropertyTrap {at}", shown["dict_property"])
    assert shown["meta_instance"] == "MetaTrapped(size=3)"
    assert shown["meta_class"] == "<class __main__.MetaTrapped>"
    assert shown["repr_trap"] == "ReprTrap(n=1)"
    assert shown["slotted"] == "SlottedTrap(__hidden='h', a=1)"
    assert shown["trap_dict"] == "TrapDict({'k': 1})"
    assert shown["trap_list"] == "TrapList([1, 2])"
    assert shown["trap_str"] == "TrapStr('shown')"
    assert shown["trap_int"] == "TrapInt(7)"
    assert shown["in_dict"] == f"{{'proxy': {lazy}, TrapStr('other'): GetattributeTrap(size=3)}}"
    assert re.fullmatch(rf"\[{re.escape(lazy)}, <__main__\.DictPropertyTrap {at}\]",
                        shown["in_list"])
    assert shown["in_tuple"] == "(MetaTrapped(size=3),)"
    assert shown["bound"] == "<bound method ?>"
    assert shown["when"] == "datetime.datetime(2026, 1, 1, 0, 0, tzinfo=<__main__.TrapTz>)"
    assert shown["cut"] == "slice(None, ReprTrap(n=1), None)"
    assert shown["module_like"] == "<module 'fake'>"

    # Lock-ish expressions resolved without running the proxy's or the metaclass's code.
    proxy_self = _frame(proc, "proxy-waiter", "__enter__")["locals"]["self"]
    assert re.fullmatch(rf"<__main__\.LockProxy {at}", proxy_self)
    assert _thread(proc, "gate-waiter")["wait"]["kind"] == "lock"  # Gate._lock, via the MRO
    joiner = _thread(proc, "joiner")["wait"]
    trap_thread = _thread(proc, "trap-thread")
    assert joiner == {"kind": "join", "what": "thread 'trap-thread' to finish",
                      "owner": trap_thread["ident"], "owner_name": "trap-thread"}
    assert trap_thread["daemon"] is True

    numbers = _held(proc, "numbers", "hold_numbers")
    assert numbers == {"count": "44", "ratio": "0.7", "flag": "True",
                       "values": "ndarray(shape=(3,), dtype=int64)"}

    (task,) = [t for t in proc["tasks"] if t["name"] == "lazy-task"]
    assert (task["state"], task["awaiting"], task["frames"]) == ("pending", "LazyCoroutine", [])

    secrets = _held(proc, "secrets", "keep_secrets")
    assert secrets == {
        "pw": "<redacted>",
        "creds": "<redacted>",
        "database_url": "'postgres://app:<redacted>@db.internal/app'",
        "x_api_key": "<redacted>",
        "headers": "[('Authorization', <redacted>), ('X-Api-Key', <redacted>), "
                   "('Accept', '*/*')]",
        "by_bytes": "{b'password': <redacted>}",
        "note": "'deploy with ghp_<redacted>'",
        "payload": """'{"user": "ada", "password": "<redacted>"}'""",
        "blob": "'<redacted>'",
        "stripe": "'sk_live_<redacted>'",
        "pem": "'-----BEGIN RSA PRIVATE KEY-----<redacted>-----END RSA PRIVATE KEY-----\\n'",
        "aws": "'AKIA<redacted>'",
    }
    assert [m for m in SECRET_MARKERS if m in raw] == []
    assert _ran(mark) == ""


def test_local_debugger_dump_unredacted_still_runs_no_host_code(
        proxies: tuple[Target, Path], base_env: dict[str, str]) -> None:
    target, mark = proxies
    proc, raw = _stacks(base_env, mark, "--pid", str(target.pid), "--no-redact")
    assert proc["locals_redacted"] is False
    secrets = _frame(proc, "secrets", "keep_secrets")["locals"]
    assert secrets["pw"] == "'pw-Zq81'"
    assert secrets["database_url"] == "'postgres://app:dbpass-Zq83@db.internal/app'"
    assert secrets["headers"].startswith("[('Authorization', 'Bearer bearer-Zq85')")
    assert all(m in raw for m in SECRET_MARKERS)
    assert _frame(proc, "lazy-locals", "hold_proxies")["locals"]["trap_int"] == "TrapInt(7)"
    assert _ran(mark) == ""


def test_rendering_never_imports_numpy_into_the_host(spawn: Any, base_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    target = spawn("stuck", env=base_env)
    proc, _ = _stacks(base_env, tmp_path / "unused", "--pid", str(target.pid))
    assert _frame(proc, "secrets", "keep_secrets")["locals"]["slow"] == "SlowRepr(size=3)"
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    assert "numpy" not in maps  # numpy's C extension would be mapped had it been imported
