"""Locals are rendered without running host code, bounded, with secrets redacted."""

from __future__ import annotations

import datetime
import enum
import threading
from pathlib import Path

from prodbug.agent.saferepr import BUDGET_SPENT, REDACTED, Limits, SafeRepr, is_secret_name


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


def test_bounds_on_chars_items_and_depth() -> None:
    fmt = SafeRepr(limits=Limits(chars=40, items=3, depth=2))
    assert fmt.value("s", "x" * 1000).endswith("...") and len(fmt.value("s", "x" * 1000)) == 40
    assert fmt.value("l", list(range(100))) == "[0, 1, 2, ...] <100 items>"
    assert fmt.value("deep", [[[[1]]]]) == "[[<list>]]"


def test_once_the_total_is_spent_every_value_shows_only_the_marker() -> None:
    fmt = SafeRepr(limits=Limits(chars=40, total=100))
    shown = [fmt.value("fill", "y" * 30) for _ in range(5)]
    # 32 characters each: the fourth value crosses the total, the fifth is not rendered.
    assert shown[:4] == ["'" + "y" * 30 + "'"] * 4
    assert shown[4] == BUDGET_SPENT
    assert fmt.exhausted and fmt.used == 128
    for name, value in (("big", "z" * 10_000), ("items", list(range(1000))),
                        ("obj", Exploding()), ("password", "hunter2")):
        assert fmt.value(name, value) == BUDGET_SPENT, name
    assert fmt.used == 128  # the marker costs nothing: the dump stays bounded
    assert len(BUDGET_SPENT) < Limits().chars


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


# -- no host code: objects whose every hook would run code -----------------------------------

ran: list[str] = []


class Proxy:
    """A lazy proxy: ``__class__``, ``__dict__`` and ``__getattr__`` are all code."""

    def __init__(self) -> None:
        self.wrapped = 1

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        ran.append("__class__")
        return dict

    @property  # type: ignore[misc]
    def __dict__(self) -> dict[str, object]:  # type: ignore[override]
        ran.append("__dict__")
        return {}

    def __getattr__(self, name: str) -> object:
        ran.append(name)
        raise AttributeError(name)


class Meta(type):
    def __getattr__(cls, name: str) -> object:
        ran.append(f"Meta.{name}")
        raise AttributeError(name)

    @property  # type: ignore[misc]
    def __mro__(cls) -> tuple[type, ...]:  # type: ignore[override]
        ran.append("Meta.__mro__")
        return (cls,)

    def __eq__(cls, other: object) -> bool:
        ran.append("Meta.__eq__")
        return cls is other

    def __hash__(cls) -> int:
        ran.append("Meta.__hash__")
        return id(cls)


class WithMeta(metaclass=Meta):
    __slots__ = ("__b", "a")

    def __init__(self) -> None:
        self.a = 1
        self.__b = 2


class Text(str):
    def __repr__(self) -> str:
        ran.append("Text.__repr__")
        return "never"

    def __format__(self, spec: str) -> str:
        ran.append("Text.__format__")
        return "never"


def test_proxies_metaclasses_and_subclasses_run_nothing() -> None:
    ran.clear()
    fmt = SafeRepr()
    assert fmt.value("p", Proxy()).startswith("<test_saferepr.Proxy object at 0x")
    assert fmt.value("m", WithMeta()) == "WithMeta(__b=2, a=1)"
    assert fmt.value("c", WithMeta) == "<class test_saferepr.WithMeta>"
    assert fmt.value("t", {Text("k"): [Proxy(), (WithMeta(),)]}).startswith(
        "{Text('k'): [<test_saferepr.Proxy object at 0x")
    assert ran == []


# -- redaction by name ------------------------------------------------------------------------

def test_more_secret_names_and_their_spellings() -> None:
    for name in ("pw", "db_pw", "creds", "cred", "X-Api-Key", "x_api_key", "x-auth-token",
                 "AWS_SECRET_ACCESS_KEY", "passwd", "privateKey"):
        assert is_secret_name(name), name
    for name in ("user", "count", "monkey_count", "request", "keyboard", "pwm_pin", "dsn"):
        assert not is_secret_name(name), name


def test_names_redacted_in_bytes_keys_header_pairs_and_namedtuples() -> None:
    from collections import namedtuple

    fmt = SafeRepr()
    assert fmt.value("pw", "hunter2") == REDACTED
    assert fmt.value("creds", ("ops", "hunter2")) == REDACTED
    assert fmt.value("h", {"X-Api-Key": "k1"}) == "{'X-Api-Key': <redacted>}"
    assert fmt.value("b", {b"password": b"hunter2"}) == "{b'password': <redacted>}"
    assert fmt.value("headers", [("Authorization", "Bearer abc"), ("Accept", "*/*")]) == \
        "[('Authorization', <redacted>), ('Accept', '*/*')]"
    assert fmt.value("pair", ["x-api-key", "k1"]) == "['x-api-key', <redacted>]"
    login = namedtuple("login", "user password")
    assert fmt.value("l", login("ada", "hunter2")) == "login(user='ada', password=<redacted>)"


def test_connection_strings_show_everything_but_credentials() -> None:
    fmt = SafeRepr()
    assert fmt.value("database_url", "postgres://u:hunter2@h/db") == \
        "'postgres://u:<redacted>@h/db'"
    assert fmt.value("DATABASE_URL", "postgres://u:p@ss@h/db") == "'postgres://u:<redacted>@h/db'"
    assert fmt.value("dsn", "https://k3y@sentry.example/1") == "'https://<redacted>@sentry.example/1'"
    assert fmt.value("dsn", "host=db user=app password=hunter2") == \
        "'host=db user=app password=<redacted>'"
    assert fmt.value("dsn", "hunter2") == REDACTED
    assert fmt.value("repo", "https://git@example.com/x.git") == "'https://git@example.com/x.git'"


# -- redaction by value, whatever the name ----------------------------------------------------

def test_secret_shaped_values_are_masked() -> None:
    fmt = SafeRepr()
    cases = {
        "postgres://u:hunter2@h/db": "'postgres://u:<redacted>@h/db'",
        "Bearer abc.def": "'Bearer <redacted>'",
        "authorization: bearer abc": "'authorization: <redacted>'",
        "Basic dXNlcjpodW50ZXIy": "'Basic <redacted>'",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----":
            "'-----BEGIN EC PRIVATE KEY-----<redacted>-----END EC PRIVATE KEY-----'",
        "sk_live_4eC39HqLyjWDarjtT1": "'sk_live_<redacted>'",
        "key=sk_test_4eC39HqLyjWD": "'key=<redacted>'",
        "use ghp_16C7e42F292c6912E7710c838347Ae178B4a": "'use ghp_<redacted>'",
        "github_pat_11AAAAAAA0_abcdefghij": "'github_pat_<redacted>'",
        "xoxb-263594206564-2343": "'xoxb-<redacted>'",
        "AKIAIOSFODNN7EXAMPLE": "'AKIA<redacted>'",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl": "'<redacted>'",
        '{"user": "ada", "password": "hunter2"}': """'{"user": "ada", "password": "<redacted>"}'""",
        "https://h/cb?token=abc&page=2": "'https://h/cb?token=<redacted>&page=2'",
        "status: ok, retries=3": "'status: ok, retries=3'",
    }
    for value, shown in cases.items():
        assert fmt.value("x", value) == shown, value
    assert fmt.value("b", b"postgres://u:hunter2@h/db") == "b'postgres://u:<redacted>@h/db'"
    assert fmt.value("x", ["ok", "Bearer abc"]) == "['ok', 'Bearer <redacted>']"


def test_a_secret_cut_by_the_limit_shows_none_of_its_characters() -> None:
    fmt = SafeRepr(limits=Limits(chars=40))
    token = "ghp_" + "A1b2C3d4" * 5
    shown = fmt.value("x", "x" * 30 + " " + token)  # too little of it fits to recognize
    assert "ghp_A" not in shown and shown.endswith("...")
    # Masking shrinks the text until the end of what was read shows: a credential cut
    # there (too short to recognize) is dropped, not shown.
    shown = fmt.value("x", "sk_live_" + "a" * 277 + " sk_live_bbbbbbbb")
    assert shown == "'sk_live_<redacted> '..."
    pem = "-----BEGIN PRIVATE KEY-----\n" + "QUJD" * 200
    assert "QUJD" not in fmt.value("x", pem)
    url = "postgres://app:" + "hunter2" * 100 + "@h/db"
    assert "hunter2" not in fmt.value("x", url)
    assert "hunter2" not in fmt.value("x", '{"password": "' + "hunter2" * 100 + '"}')


def test_no_redact_shows_values_as_they_are() -> None:
    fmt = SafeRepr(redact=False)
    assert fmt.value("pw", "hunter2") == "'hunter2'"
    assert fmt.value("x", "postgres://u:hunter2@h/db") == "'postgres://u:hunter2@h/db'"
    assert fmt.value("h", [("Authorization", "Bearer abc")]) == "[('Authorization', 'Bearer abc')]"


# -- numpy: values, not objects ---------------------------------------------------------------

def test_numpy_scalars_show_their_values_and_arrays_their_shape() -> None:
    import numpy as np

    fmt = SafeRepr()
    assert fmt.value("n", np.int64(44)) == "44"
    assert fmt.value("n", np.uint8(7)) == "7"
    assert fmt.value("f", np.float64(0.7)) == "0.7"
    assert fmt.value("b", np.bool_(True)) == "True"
    assert fmt.value("c", np.complex128(1 + 2j)) == "(1+2j)"
    assert fmt.value("a", np.arange(3, dtype=np.int64)) == "ndarray(shape=(3,), dtype=int64)"
    assert fmt.value("a", np.zeros((2, 3))) == "ndarray(shape=(2, 3), dtype=float64)"
    assert fmt.value("d", {"n": np.int32(5)}) == "{'n': 5}"


def test_subclasses_of_str_and_bytes_are_cut_and_masked_like_str_and_bytes() -> None:
    fmt = SafeRepr(limits=Limits(chars=40))
    secret = "postgres://app:" + "hunter2" * 100 + "@h/db"
    assert "hunter2" not in fmt.value("x", Text(secret))
    assert "hunter2" not in fmt.value("x", secret.encode())
    assert fmt.value("x", Text("Bearer abc")) == "Text('Bearer <redacted>')"
