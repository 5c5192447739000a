"""What the audit trail keeps, and what it leaves out (docs/security.md "The audit trail:
what is kept", docs/protocol.md section 7), read from the JSON-lines file itself."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Keys, wait_for

from prodbug import protocol
from prodbug.client import Client, Credentials
from prodbug.errors import AuthError, RemoteError
from prodbug.keys import fingerprint, load_certificate

#: The fields of every request record (docs: time, key name and fingerprint, role, pid,
#: command, outcome, duration), and nothing else: no arguments, no results.
REQUEST_FIELDS = {"time", "event", "key", "key_id", "role", "pid", "cmd", "outcome",
                  "duration_ms"}
SESSION_FIELDS = {"time", "event", "key", "key_id", "pid", "mode", "outcome"}
DENIED_FIELDS = {"time", "event", "key", "address", "reason"}
SECRET = "hunter2-sentinel"


def _credentials(keys: Keys, secret: Path) -> Credentials:
    return Credentials(load_certificate(secret), load_certificate(keys.server_public).public_key)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _until(client: Client, session: str, wanted: Any, deadline: float, *,
           ping: bool = True) -> Any:
    """Ping ``session`` (as its CLI would, unless ``ping`` is off) until an event comes for
    which ``wanted`` returns something; returns that."""
    pinged = 0.0
    while time.monotonic() < deadline:
        if ping and time.monotonic() - pinged >= 0.5:
            client.send_request("session.ping", {"session": session})
            pinged = time.monotonic()
        message = client.poll_message(0.1)
        if isinstance(message, protocol.Event):
            found = wanted(message)
            if found is not None:
                return found
    raise AssertionError(f"no such event for session {session} in time")


def _prompt(event: protocol.Event) -> Any:
    return event.data.get("prompt") if event.kind == "output" else None


def _ended(event: protocol.Event) -> Any:
    return True if event.kind == "state" and event.data["state"] == "ended" else None


def test_audit_records_hold_their_documented_fields_and_nothing_more(
        spawn, agent_env, keys: Keys, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    target = spawn("service", env={**agent_env, "PRODBUG_AUDIT_LOG": str(audit),
                                    "PRODBUG_SESSION_HEARTBEAT": "10"})
    alice = fingerprint(load_certificate(keys.observer).public_key)
    bob = fingerprint(load_certificate(keys.debugger).public_key)
    deadline = time.monotonic() + 60

    with Client(target.tcp, _credentials(keys, keys.observer), timeout=30) as observer:
        observer.request("ping", {"token": SECRET})  # arguments are not recorded
        observer.request("stacks", {"cpu_interval": 0, "locals": 1})  # nor locals
        with pytest.raises(AuthError, match="needs the debugger role"):
            observer.request("audit")  # a refused request: recorded, as refused
        with pytest.raises(RemoteError, match="unknown command"):
            observer.request("ping\nforged key=bob outcome=ok")

    with Client(target.tcp, _credentials(keys, keys.debugger), timeout=30) as debugger:
        # pdb: every typed line recorded with its literals masked and cut at 200 characters;
        # the heartbeats not at all; the session's end with its outcome.
        pdb = debugger.request("pdb.open", {"mode": "inspect", "thread": "worker"})["session"]
        _until(debugger, pdb, _prompt, deadline)
        debugger.request("session.input", {"session": pdb, "data": f"p '{SECRET}' == 1"})
        debugger.request("session.input", {"session": pdb, "data": "p " + "1+" * 150 + "1"})
        debugger.request("session.close", {"session": pdb})
        _until(debugger, pdb, _ended, deadline, ping=False)

        # VS Code: the session's start and end are recorded, not the DAP bytes in transit.
        dap = debugger.request("dap.open", {"confirm": True})["session"]
        ready = _until(debugger, dap, lambda m: m.data if m.kind == "dap_ready" else None,
                       deadline)
        assert ready["debugpy"] == "ready", ready
        channel = debugger.request("dap.connect", {"session": dap})["channel"]
        body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                           "arguments": {"adapterID": SECRET}}).encode()
        for _ in range(2):
            debugger.request("dap.send", {"session": dap, "channel": channel, "data":
                                          base64.b64encode(b"Content-Length: %d\r\n\r\n"
                                                           % len(body) + body).decode()})
        debugger.request("session.close", {"session": dap})
        _until(debugger, dap, _ended, deadline, ping=False)

    with Client(target.tcp, _credentials(keys, keys.stranger), timeout=30) as stranger, \
            pytest.raises(AuthError, match="not authorized"):
        stranger.request("ping")

    def complete() -> bool:
        return audit.exists() and sum(r["event"] == "session" for r in _records(audit)) == 2 \
            and any(r["event"] == "denied" for r in _records(audit))
    assert wait_for(complete, timeout=30), audit.read_text() if audit.exists() else "no file"

    assert oct(audit.stat().st_mode & 0o777) == oct(0o600)
    text = audit.read_text()
    assert SECRET not in text  # not typed into pdb, nor sent as an argument or in DAP
    records = [json.loads(line) for line in text.splitlines()]  # nothing forged a line
    requests = [r for r in records if r["event"] == "request"]
    assert [(r["key"], r["key_id"], r["role"], r["cmd"], r["outcome"]) for r in requests] == [
        ("alice", alice, "observer", "ping", "ok"),
        ("alice", alice, "observer", "stacks", "ok"),
        ("alice", alice, "observer", "audit", "forbidden"),
        ("alice", alice, "observer", "ping\\nforged key=bob outcome=ok", "unknown_command"),
        ("bob", bob, "debugger", "pdb.open", "ok"),
        ("bob", bob, "debugger", "session.input", "ok"),
        ("bob", bob, "debugger", "session.input", "ok"),
        ("bob", bob, "debugger", "session.close", "ok"),
        ("bob", bob, "debugger", "dap.open", "ok"),
        ("bob", bob, "debugger", "dap.connect", "ok"),
        ("bob", bob, "debugger", "session.close", "ok"),
    ]  # no session.ping, no dap.send
    for record in requests:
        extra = {"line"} if record["cmd"] == "session.input" else set()
        assert set(record) == REQUEST_FIELDS | extra, record
        assert record["pid"] == target.pid and float(record["duration_ms"]) >= 0
    assert [r["line"] for r in requests if "line" in r] == [
        "p '***' == 1", ("p " + "1+" * 150)[:200]]
    sessions = [r for r in records if r["event"] == "session"]
    assert [(r["key"], r["key_id"], r["mode"], r["outcome"]) for r in sessions] == [
        ("bob", bob, "inspect", "closed by the operator: the thread goes on"),
        ("bob", bob, "vscode",
         "closed by the operator: VS Code's connection closed, threads resume")], sessions
    assert all(set(r) == SESSION_FIELDS and r["pid"] == target.pid for r in sessions)
    (denied,) = [r for r in records if r["event"] == "denied"]
    assert set(denied) == DENIED_FIELDS, denied
    assert denied["key"] == fingerprint(load_certificate(keys.stranger).public_key)
    assert denied["address"] == "127.0.0.1" and denied["reason"] == "key not authorized"
