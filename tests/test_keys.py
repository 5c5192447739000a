"""Certificates: the zmq.auth format, safe permissions, roles."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from prodbug.errors import ConfigError
from prodbug.keys import (
    load_authorized_keys,
    load_certificate,
    load_secret_certificate,
    parse_server_key,
    write_certificate_pair,
)


def test_keygen_writes_a_zmq_auth_pair_with_a_private_secret(tmp_path: Path) -> None:
    public, secret = write_certificate_pair(tmp_path, "ops", "debugger")
    assert os.stat(secret).st_mode & 0o777 == 0o600
    zmq_public, zmq_secret = zmq.auth.load_certificate(str(secret))
    assert zmq_secret is not None
    assert zmq.auth.load_certificate(str(public)) == (zmq_public, None)
    cert = load_secret_certificate(secret)
    assert (cert.public_key.encode(), cert.name) == (zmq_public, "ops")


def test_keygen_refuses_to_clobber(tmp_path: Path) -> None:
    write_certificate_pair(tmp_path, "ops")
    with pytest.raises(ConfigError, match="--force"):
        write_certificate_pair(tmp_path, "ops")
    before = load_secret_certificate(tmp_path / "ops.key_secret")
    public, secret = write_certificate_pair(tmp_path, "ops", force=True)
    after = load_secret_certificate(secret)
    assert after.public_key != before.public_key and after.secret_key != before.secret_key
    assert load_certificate(public).public_key == after.public_key  # the pair matches
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_secret_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    _, secret = write_certificate_pair(tmp_path, "ops")
    os.chmod(secret, 0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {secret}"):
        load_secret_certificate(secret)


def test_missing_and_public_only_secret_files(tmp_path: Path) -> None:
    public, _ = write_certificate_pair(tmp_path, "ops")
    with pytest.raises(ConfigError, match="prodbug keygen"):
        load_secret_certificate(tmp_path / "nope.key_secret")
    os.chmod(public, 0o600)
    with pytest.raises(ConfigError, match="only a public key"):
        load_secret_certificate(public)


def test_authorized_keys_carry_names_and_roles(tmp_path: Path) -> None:
    a, _ = write_certificate_pair(tmp_path / "a", "alice", "observer")
    b, _ = write_certificate_pair(tmp_path / "b", "bob", "debugger")
    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / a.name).write_text(a.read_text())
    (auth / b.name).write_text(b.read_text())
    keys = load_authorized_keys(auth)
    assert sorted((k.name, k.role) for k in keys.values()) == [
        ("alice", "observer"), ("bob", "debugger")]
    assert [k.name for k in load_authorized_keys(auth / "bob.key").values()] == ["bob"]


def test_a_certificate_generated_by_pyzmq_is_an_observer(tmp_path: Path) -> None:
    public, _ = zmq.auth.create_certificates(str(tmp_path), "carol")
    (key,) = load_authorized_keys(Path(public)).values()
    assert (key.name, key.role) == ("carol", "observer")


def test_bad_role_and_missing_directory(tmp_path: Path) -> None:
    public, _ = write_certificate_pair(tmp_path, "eve")
    public.write_text(public.read_text().replace('role = "observer"', 'role = "root"'))
    with pytest.raises(ConfigError, match='role "root"'):
        load_authorized_keys(public)
    with pytest.raises(ConfigError, match="does not exist"):
        load_authorized_keys(tmp_path / "missing")


def test_server_key_as_text_or_file(tmp_path: Path) -> None:
    public, _ = write_certificate_pair(tmp_path, "server")
    from_file = parse_server_key(str(public))
    assert parse_server_key(from_file) == from_file
    with pytest.raises(ConfigError):
        parse_server_key(str(tmp_path / "garbage"))
