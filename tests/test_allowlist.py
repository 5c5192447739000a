"""The allow-list of client keys changes under a running agent (docs/security.md "Who can
reach what", docs/protocol.md section 7): a key added is accepted, a key removed is refused
on new and open connections (the operator's open pdb is told so), a role changes both ways,
and a broken file keeps the previous list, saying so on the agent's log. No restart."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import Keys, wait_for

from prodbug.client import Client, Credentials
from prodbug.errors import AuthError
from prodbug.keys import fingerprint, load_certificate

PROMPT = r"\(Pdb\) "
KEPT = "keeping the previous authorized keys"


def _credentials(keys: Keys, secret: Path) -> Credentials:
    return Credentials(load_certificate(secret), load_certificate(keys.server_public).public_key)


def _accepted(target_tcp: str, creds: Credentials) -> bool:
    """Whether a new connection with ``creds`` gets through the handshake and is served."""
    with Client(target_tcp, creds, timeout=30) as client:
        try:
            client.request("ping")
        except AuthError as exc:
            assert "not authorized" in str(exc)
            return False
    return True


def _may_audit(client: Client) -> bool:
    """Whether ``client``'s key holds the debugger role right now (on its open connection)."""
    try:
        client.request("audit")
    except AuthError as exc:
        assert '"audit" needs the debugger role; key "alice" is observer' in str(exc)
        return False
    return True


def _set_role(file: Path, role: str) -> None:
    text = file.read_text()
    for old in ('role = "observer"', 'role = "debugger"'):
        text = text.replace(old, f'role = "{role}"')
    file.write_text(text)


def test_the_allow_list_changes_under_a_running_agent(spawn, agent_env, keys: Keys,
                                                      tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(keys.authorized / "alice.key", authorized)
    clients = keys.root / "clients"
    audit = tmp_path / "audit.jsonl"
    target = spawn("service", env={**agent_env, "PRODBUG_AUTHORIZED_KEYS": str(authorized),
                                    "PRODBUG_AUDIT_LOG": str(audit),
                                    "PRODBUG_SESSION_HEARTBEAT": "10"})
    alice = Client(target.tcp, _credentials(keys, keys.observer), timeout=30)
    mallory = _credentials(keys, keys.stranger)
    try:
        # A key added to the directory: accepted at its next handshake.
        assert not _accepted(target.tcp, mallory)
        shutil.copy(clients / "mallory.key", authorized)
        assert _accepted(target.tcp, mallory)

        # A role changed in the key's file: on the connection already open, both ways.
        assert not _may_audit(alice)
        _set_role(authorized / "alice.key", "debugger")
        assert wait_for(lambda: _may_audit(alice), timeout=10)
        _set_role(authorized / "alice.key", "observer")
        assert wait_for(lambda: not _may_audit(alice), timeout=10)

        # A broken file (not a certificate; then a role that does not exist) keeps the whole
        # previous list, the key removed with it included, and the agent says why.
        with Client(target.tcp, mallory, timeout=30) as open_mallory:
            for number, (broken, why) in enumerate([
                    ("not a certificate\n", "junk.key is not a CURVE certificate"),
                    ((clients / "bob.key").read_text().replace('"debugger"', '"root"'),
                     'junk.key: role "root" is not one of')], 1):
                (authorized / "mallory.key").unlink(missing_ok=True)
                (authorized / "junk.key").write_text(broken)

                def said_so(number: int = number, why: str = why) -> bool:
                    open_mallory.request("ping")  # reloads; never refused meanwhile
                    kept = [line for line in target.output if KEPT in line]
                    return len(kept) == number and why in kept[-1]
                assert wait_for(said_so, timeout=10), "".join(target.output)
                assert _accepted(target.tcp, mallory)
                assert not _may_audit(alice)
            # Fixed: the list as the directory now says, mallory's removal included.
            (authorized / "junk.key").unlink()
            assert not _accepted(target.tcp, mallory)
            with pytest.raises(AuthError, match="no longer authorized"):
                open_mallory.request("ping")

        # A removed key's open pdb session: its next request is told so, not left to time
        # out as if the process were frozen; its new handshakes are refused.
        shutil.copy(clients / "bob.key", authorized)
        bob = fingerprint(load_certificate(keys.debugger).public_key)
        env = {**agent_env, "PRODBUG_CLIENT_SECRET_KEY": str(keys.debugger),
               "PRODBUG_SERVER_KEY": str(keys.server_public)}
        child = pexpect.spawn(sys.executable, ["-m", "prodbug", "pdb", target.host_port,
                                               "--inspect", "worker", "--timeout", "600"],
                              env=env, encoding="utf-8", timeout=60)
        try:
            child.expect(PROMPT)
            (authorized / "bob.key").unlink()

            def revoked() -> bool:  # the CLI's heartbeat was refused: the agent knows
                return any(r["event"] == "denied" and r["key"] == bob
                           and r["reason"] == "key revoked"
                           for r in map(json.loads, audit.read_text().splitlines()))
            assert wait_for(revoked, timeout=10), audit.read_text()
            # The operator is told at once, unasked, and the CLI ends as refused keys do.
            child.expect("this key is no longer authorized by the agent")
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 4
        finally:
            child.close(force=True)
        assert not _accepted(target.tcp, _credentials(keys, keys.debugger))
        assert not _may_audit(alice)  # the agent serves on
    finally:
        alice.close()


def test_a_dangling_key_link_does_not_freeze_the_allow_list(keys: Keys, tmp_path: Path) -> None:
    from prodbug.agent.keyring import KeyRing

    authorized = tmp_path / "authorized"
    shutil.copytree(keys.authorized, authorized)
    bob = load_certificate(keys.debugger).public_key
    ring = KeyRing(authorized)
    (authorized / "gone.key").symlink_to(tmp_path / "deleted-from-the-key-store.key")
    assert ring.lookup(bob) is not None
    (authorized / "bob.key").unlink()
    assert ring.lookup(bob) is None  # revoked: its next handshake is refused
