"""Locals are rendered without running host code, bounded, with secrets redacted."""

from __future__ import annotations

import datetime
import enum
import threading
from pathlib import Path

from prodbug.agent.saferepr import REDACTED, Limits, SafeRepr, is_secret_name


class Exploding:
    def __init__(self) -> None:
        self.ok = 1

    def __repr__(self) -> str:
        raise RuntimeError("boom")

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("user code ran")


class Slotted:
    __slots__ = ("a",)


class Color(enum.Enum):
    RED = 1


def test_user_repr_and_getattr_never_run() -> None:
    fmt = SafeRepr()
    assert fmt.value("x", Exploding()) == "Exploding(ok=1)"
    assert fmt.value("s", Slotted()).startswith("<test_saferepr.Slotted object at 0x")


def test_builtins_and_known_stdlib_types() -> None:
    fmt = SafeRepr()
    assert fmt.value("n", 42) == "42"
    assert fmt.value("big", 2**400) == "<int of 401 bits>"
    assert fmt.value("t", (1,)) == "(1,)"
    assert fmt.value("d", datetime.date(2026, 11, 29)) == "datetime.date(2026, 11, 29)"
    assert fmt.value("p", Path("/srv/app")) == "PosixPath('/srv/app')"
    assert fmt.value("c", Color.RED) == "Color.RED"
    assert fmt.value("lock", threading.Lock()).startswith("<unlocked _thread.lock object")


def test_bounds_on_chars_items_depth_and_total() -> None:
    fmt = SafeRepr(limits=Limits(chars=40, items=3, depth=2, total=100))
    assert fmt.value("s", "x" * 1000).endswith("...") and len(fmt.value("s", "x" * 1000)) == 40
    assert fmt.value("l", list(range(100))) == "[0, 1, 2, ...] <100 items>"
    assert fmt.value("deep", [[[[1]]]]) == "[[<list>]]"
    while not fmt.exhausted:
        fmt.value("fill", "y" * 30)
    assert fmt.used >= 100


def test_secrets_redacted_by_name_key_and_attribute() -> None:
    class Conn:
        def __init__(self) -> None:
            self.host = "db"
            self.password = "hunter2"

    fmt = SafeRepr()
    assert fmt.value("password", "hunter2") == REDACTED
    assert fmt.value("headers", {"Authorization": "Bearer x", "accept": "*/*"}) == \
        "{'Authorization': <redacted>, 'accept': '*/*'}"
    assert fmt.value("conn", Conn()) == "Conn(host='db', password=<redacted>)"
    assert SafeRepr(redact=False).value("password", "hunter2") == "'hunter2'"
    for name in ("api_key", "AWS_SECRET_ACCESS_KEY", "session_id", "cookie", "jwt", "token"):
        assert is_secret_name(name), name
    for name in ("user", "count", "monkey_count", "request"):
        assert not is_secret_name(name), name


class Registry(dict[str, int]):
    def items(self):  # type: ignore[override]
        raise RuntimeError("user code ran")


def test_a_dict_subclass_is_read_from_its_storage() -> None:
    assert SafeRepr().value("d", Registry(a=1)) == "Registry({'a': 1})"
