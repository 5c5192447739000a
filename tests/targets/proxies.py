"""Host objects that run host code the moment anyone inspects them, held by waiting threads.

Every trap, once armed, appends what ran and in which thread to the file $PROXIES_MARK,
then blocks forever on an Event nobody sets: if the agent ran one, the dump never comes
back and the file says which. Until armed (while the host sets things up) the traps behave
like the proxies they imitate (Django's ``SimpleLazyObject``, werkzeug's ``LocalProxy``).

Threads:
* ``lazy-locals``: proxies and trap objects as locals, inside a dict, a list, a tuple, a
  dict subclass; a class with a trapping metaclass; a bound method of a proxy; a datetime
  with a trapping tzinfo; a module subclass.
* ``proxy-holder`` inside ``with LOCK_PROXY:`` and ``proxy-waiter`` blocked entering it
  (a LocalProxy-like wrapper of a lock: ``__class__``, ``__dict__``, ``__getattr__`` traps).
* ``gate-holder`` inside ``with HOLDER.gate:`` and ``gate-waiter`` blocked entering it
  (a class attribute of a class whose metaclass traps ``__mro__``, ``__getattr__`` ...).
* ``joiner`` in ``Thread.join`` of ``trap-thread`` (a Thread subclass whose ``name``,
  ``ident``, ``daemon`` and ``native_id`` properties are traps).
* ``secrets``: locals whose names or values hold secrets (each has a ``Zq`` marker).
* ``numbers``: numpy scalars and an array.
* ``loop-thread``: an asyncio task whose coroutine is a lazy proxy.
Prints ``READY {json}`` once every thread is in place and the traps are armed.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

import prodbug

ARMED = threading.Event()
NEVER = threading.Event()
MARK = os.environ["PROXIES_MARK"]


def trap(what: str) -> None:
    """Host code that must never run in the agent: record it, then block forever."""
    if not ARMED.is_set():
        return
    with open(MARK, "a") as f:
        f.write(f"{what} ran in thread {threading.current_thread().name!r}\n")
    NEVER.wait()


def traps(*names: str) -> Callable[[type], type]:
    """Class decorator: a subclass whose ``__class__`` and each named method trap (then do
    what the class does)."""

    def decorate(cls: type) -> type:
        label = cls.__name__
        namespace: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__}
        for name in names:
            real = getattr(cls, name)

            def method(self: Any, *args: Any, _name: str = name, _real: Any = real) -> Any:
                trap(f"{label}.{_name}")
                return _real(self, *args)

            namespace[name] = method
        namespace["__class__"] = property(lambda self: (trap(f"{label}.__class__"), type(self))[1])
        return type(label, (cls,), namespace)

    return decorate


class LazyObject:
    """Like Django's SimpleLazyObject: anything but its own slots evaluates it."""

    def __init__(self, setup: Callable[[], Any]) -> None:
        self._setupfunc = setup
        self._wrapped = None

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        trap("LazyObject.__class__")
        return type(self)

    def __getattr__(self, name: str) -> Any:
        trap(f"LazyObject.__getattr__({name})")
        raise AttributeError(name)

    def __repr__(self) -> str:
        trap("LazyObject.__repr__")
        return "LazyObject"

    def __format__(self, spec: str) -> str:
        trap("LazyObject.__format__")
        return "LazyObject"

    def __eq__(self, other: object) -> bool:
        trap("LazyObject.__eq__")
        return self is other

    def __hash__(self) -> int:
        trap("LazyObject.__hash__")
        return id(self)

    def __call__(self, *args: Any) -> Any:
        trap("LazyObject.__call__")

    def __len__(self) -> int:
        trap("LazyObject.__len__")
        return 0

    def __iter__(self) -> Any:
        trap("LazyObject.__iter__")
        return iter(())


class GetattributeTrap:
    def __init__(self) -> None:
        self.size = 3

    def __getattribute__(self, name: str) -> Any:
        trap(f"GetattributeTrap.__getattribute__({name})")
        return object.__getattribute__(self, name)


class DictPropertyTrap:
    def __init__(self) -> None:
        self.size = 3  # stored through the instance's dict pointer, not the property

    @property  # type: ignore[misc]
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        trap("DictPropertyTrap.__dict__")
        return {}


class Meta(type):
    """A metaclass whose every hook is a trap."""

    def __getattr__(cls, name: str) -> Any:
        trap(f"Meta.__getattr__({name})")
        raise AttributeError(name)

    def __instancecheck__(cls, obj: object) -> bool:
        trap("Meta.__instancecheck__")
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        trap("Meta.__subclasscheck__")
        return type.__subclasscheck__(cls, sub)

    @property  # type: ignore[misc]
    def __mro__(cls) -> tuple[type, ...]:  # type: ignore[override]
        trap("Meta.__mro__")
        return type.__dict__["__mro__"].__get__(cls)  # type: ignore[no-any-return]

    def __eq__(cls, other: object) -> bool:
        trap("Meta.__eq__")
        return cls is other

    def __hash__(cls) -> int:
        trap("Meta.__hash__")
        return id(cls)

    def __repr__(cls) -> str:
        trap("Meta.__repr__")
        return "<Meta class>"


class MetaTrapped(metaclass=Meta):
    def __init__(self) -> None:
        self.size = 3


class Gate(metaclass=Meta):
    """A lock-like guard; as a class attribute, ``has __get__?`` asks Meta.__getattr__."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Holder(metaclass=Meta):
    gate = Gate()


HOLDER = Holder()


class LockProxy:
    """Like werkzeug's LocalProxy around a lock: ``with LOCK_PROXY:`` works."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        trap("LockProxy.__class__")
        return type(self._lock)

    @property  # type: ignore[misc]
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        trap("LockProxy.__dict__")
        return {}

    def __getattr__(self, name: str) -> Any:
        trap(f"LockProxy.__getattr__({name})")
        raise AttributeError(name)

    def __repr__(self) -> str:
        trap("LockProxy.__repr__")
        return "LockProxy"

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


LOCK_PROXY = LockProxy(threading.Lock())


@traps("__repr__", "__str__", "__format__")
class ReprTrap:
    def __init__(self) -> None:
        self.n = 1


@traps("__getattribute__", "__repr__")
class SlottedTrap:
    __slots__ = ("__hidden", "a")

    def __init__(self) -> None:
        self.a = 1
        self.__hidden = "h"


@traps("items", "keys", "values", "__iter__", "__getitem__", "__len__", "__repr__")
class TrapDict(dict):  # type: ignore[type-arg]
    pass


@traps("__iter__", "__len__", "__getitem__", "__repr__")
class TrapList(list):  # type: ignore[type-arg]
    pass


@traps("__repr__", "__str__", "__format__", "__getitem__", "__len__", "__iter__")
class TrapStr(str):
    pass


@traps("__repr__", "__str__", "__format__", "__index__", "__int__")
class TrapInt(int):
    pass


@traps("utcoffset", "tzname", "dst", "__repr__")
class TrapTz(datetime.tzinfo):
    pass


class _TrapModule(types.ModuleType):
    def __getattribute__(self, name: str) -> Any:
        trap(f"TrapModule.__getattribute__({name})")
        return super().__getattribute__(name)


class LazyCoroutine:
    """A lazy proxy standing in for a coroutine (asyncio accepts it: ``__class__`` says so)."""

    def __init__(self, coro: Any) -> None:
        self._wrapped = coro

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        trap("LazyCoroutine.__class__")
        return types.CoroutineType

    def __getattr__(self, name: str) -> Any:
        trap(f"LazyCoroutine.__getattr__({name})")
        return getattr(object.__getattribute__(self, "_wrapped"), name)

    def __repr__(self) -> str:
        trap("LazyCoroutine.__repr__")
        return "LazyCoroutine"


class TrapThread(threading.Thread):
    """A Thread subclass whose public properties are traps (its fields are not)."""

    @property  # type: ignore[override]
    def name(self) -> str:
        trap("TrapThread.name")
        return self._name  # type: ignore[attr-defined,no-any-return]

    @property  # type: ignore[override]
    def ident(self) -> int | None:
        trap("TrapThread.ident")
        return self._ident  # type: ignore[attr-defined,no-any-return]

    @property  # type: ignore[override]
    def daemon(self) -> bool:
        trap("TrapThread.daemon")
        return self._daemonic  # type: ignore[attr-defined,no-any-return]

    @property  # type: ignore[override]
    def native_id(self) -> int | None:
        trap("TrapThread.native_id")
        return self._native_id  # type: ignore[attr-defined,no-any-return]


def park() -> None:
    while True:
        time.sleep(3600)


def hold_proxies(ready: threading.Event) -> None:
    lazy = LazyObject(lambda: {"user": "ada"})
    getattribute = GetattributeTrap()
    dict_property = DictPropertyTrap()
    meta_instance = MetaTrapped()
    meta_class = MetaTrapped
    repr_trap = ReprTrap()
    slotted = SlottedTrap()
    trap_dict = TrapDict(k=1)
    trap_list = TrapList([1, 2])
    trap_str = TrapStr("shown")
    trap_int = TrapInt(7)
    in_dict = {"proxy": lazy, TrapStr("other"): getattribute}
    in_list = [lazy, dict_property]
    in_tuple = (meta_instance,)
    bound = types.MethodType(lazy, repr_trap)
    when = datetime.datetime(2026, 1, 1, tzinfo=TrapTz())
    cut = slice(repr_trap)
    module_like = _TrapModule("fake")
    ready.set()
    park()
    print(lazy, getattribute, dict_property, meta_instance, meta_class, repr_trap, slotted,
          trap_dict, trap_list, trap_str, trap_int, in_dict, in_list, in_tuple, bound, when, cut,
          module_like)


def hold_proxy_lock(ready: threading.Event) -> None:
    with LOCK_PROXY:
        ready.set()
        park()


def wait_proxy_lock(ready: threading.Event) -> None:
    ready.set()
    with LOCK_PROXY:
        pass


def hold_gate(ready: threading.Event) -> None:
    with HOLDER.gate:
        ready.set()
        park()


def wait_gate(ready: threading.Event) -> None:
    ready.set()
    with HOLDER.gate:
        pass


def join_trap_thread(ready: threading.Event) -> None:
    other = TrapThread(target=park, name="trap-thread", daemon=True)
    other.start()
    ready.set()
    other.join()


def keep_secrets(ready: threading.Event) -> None:
    pw = "pw-Zq81"
    creds = ("ops", "creds-Zq82")
    database_url = "postgres://app:dbpass-Zq83@db.internal/app"
    x_api_key = "apikey-Zq84"
    headers = [("Authorization", "Bearer bearer-Zq85"), ("X-Api-Key", "hdrkey-Zq86"),
               ("Accept", "*/*")]
    by_bytes = {b"password": b"bytespw-Zq87"}
    note = "deploy with ghp_Zq88abcdefghijklmnopqrstuvwxyz0123"
    payload = '{"user": "ada", "password": "jsonpw-Zq89"}'
    blob = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-Zq90-sig"
    stripe = "sk_live_Zq91abcdefghijklmnop"
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIZq92secretbody\n-----END RSA PRIVATE KEY-----\n"
    aws = "AKIAZQ93EXAMPLE00001"
    ready.set()
    park()
    print(pw, creds, database_url, x_api_key, headers, by_bytes, note, payload, blob, stripe,
          pem, aws)


def hold_numbers(ready: threading.Event) -> None:
    count = np.int64(44)
    ratio = np.float64(0.7)
    flag = np.bool_(True)
    values = np.arange(3, dtype=np.int64)
    ready.set()
    park()
    print(count, ratio, flag, values)


async def forever(event: asyncio.Event) -> None:
    await event.wait()


async def serve(ready: threading.Event) -> None:
    event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(LazyCoroutine(forever(event)),  # type: ignore[arg-type]
                                                  name="lazy-task")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    ready.set()
    await task


def in_function(thread: threading.Thread, names: set[str]) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    return frame is not None and frame.f_code.co_name in names


def main() -> None:
    started = []
    for name, body in (("lazy-locals", hold_proxies), ("proxy-holder", hold_proxy_lock),
                       ("proxy-waiter", wait_proxy_lock), ("gate-holder", hold_gate),
                       ("gate-waiter", wait_gate), ("joiner", join_trap_thread),
                       ("secrets", keep_secrets), ("numbers", hold_numbers),
                       ("loop-thread", lambda ev: asyncio.run(serve(ev)))):
        ready = threading.Event()
        thread = threading.Thread(target=body, args=(ready,), name=name, daemon=True)
        thread.start()
        ready.wait()
        started.append(thread)
    by_name = {t.name: t for t in started}
    # Blocked where the dump must look: in the proxy's / gate's __enter__, in Thread.join.
    blocked = {"proxy-waiter": {"__enter__"}, "gate-waiter": {"__enter__"},
               "joiner": {"join", "_wait_for_tstate_lock"}}
    deadline = time.monotonic() + 20
    while not all(in_function(by_name[n], f) for n, f in blocked.items()):
        if time.monotonic() > deadline:
            raise SystemExit("threads did not block where expected")
        time.sleep(0.01)
    agent = prodbug.start_agent()
    ARMED.set()
    print("READY " + json.dumps({"pid": os.getpid(), "tcp": agent.tcp_endpoint}), flush=True)
    sys.stdin.read()
    os._exit(0)  # no interpreter teardown: it could touch the armed traps


if __name__ == "__main__":
    main()
