"""Bounded, side-effect-free representations of live objects, with secrets redacted.

No user code runs here: a class's own ``__repr__``, ``__getattr__``, properties and
``__iter__`` are never called, so a ``__repr__`` that blocks, raises or takes a lock cannot
stall or break a dump. Built-in values are rendered by type; other objects as
``ClassName(attr=..., ...)`` from their instance ``__dict__``. Every output is bounded in
characters per value, items per container, nesting depth and total size.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import ipaddress
import pathlib
import re
import threading
import types
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

__all__ = ["REDACTED", "Limits", "SafeRepr", "is_secret_name"]

REDACTED = "<redacted>"
_SECRET = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|private_?key|^key$|_key$|auth|cookie|"
    r"credential|session_?id|signature|^pwd$|jwt|bearer",
    re.IGNORECASE,
)
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
#: Exact stdlib types whose repr is stdlib code, bounded and side-effect free.
_SAFE_REPR_TYPES = frozenset({
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone,
    decimal.Decimal, fractions.Fraction, uuid.UUID, range, slice,
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
})


def is_secret_name(name: str) -> bool:
    """Whether a variable, attribute or key name looks like it holds a secret."""
    return bool(_SECRET.search(name))


@dataclass(frozen=True)
class Limits:
    """How much one dump may show."""

    chars: int = 200  # per value
    items: int = 10  # per container
    depth: int = 3
    total: int = 64 * 1024  # per dump, all values together


@dataclass
class SafeRepr:
    """One dump's formatter: keeps the running total so the whole dump stays bounded."""

    limits: Limits = field(default_factory=Limits)
    redact: bool = True
    used: int = 0

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limits.total

    def value(self, name: str, obj: Any) -> str:
        """The representation of variable ``name`` (redacted if the name looks secret)."""
        if self.redact and is_secret_name(name):
            text = REDACTED
        else:
            try:
                text = self._repr(obj, self.limits.depth)
            except Exception as exc:  # e.g. a container changing under us
                text = f"<unrepresentable: {type(exc).__name__}>"
        text = self._cut(text)
        self.used += len(text)
        return text

    def _cut(self, text: str) -> str:
        if len(text) > self.limits.chars:
            return text[: self.limits.chars - 3] + "..."
        return text

    def _repr(self, obj: Any, depth: int) -> str:
        cls = type(obj)
        if obj is None or cls in (bool, float, complex):
            return repr(obj)
        if cls is int:
            return repr(obj) if obj.bit_length() <= 256 else f"<int of {obj.bit_length()} bits>"
        if cls is str:
            return repr(obj[: self.limits.chars])
        if cls in (bytes, bytearray):
            return repr(obj[: self.limits.chars])
        if cls in _SAFE_REPR_TYPES:
            return repr(obj)
        if isinstance(obj, enum.Enum):
            member = object.__getattribute__(obj, "__dict__").get("_name_", "?")
            return f"{cls.__qualname__}.{member}"
        if isinstance(obj, _LOCK_TYPES):
            return repr(obj)  # implemented in C: bounded, no user code
        if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            return f"<function {getattr(obj, '__qualname__', '?')}>"
        if isinstance(obj, types.ModuleType):
            return f"<module {obj.__name__!r}>"
        if isinstance(obj, type):
            return f"<class {obj.__module__}.{obj.__qualname__}>"
        if depth <= 0:
            return f"<{cls.__qualname__}>"
        if isinstance(obj, dict):
            return self._mapping(cls, obj, depth)
        if isinstance(obj, (list, tuple, set, frozenset, deque)):
            return self._sequence(cls, obj, depth)
        return self._object(cls, obj, depth)

    def _items(self, pairs: Any, depth: int) -> tuple[list[str], bool]:
        out: list[str] = []
        more = False
        for n, (key, value) in enumerate(pairs):
            if n >= self.limits.items:
                more = True
                break
            secret = self.redact and isinstance(key, str) and is_secret_name(key)
            shown = REDACTED if secret else self._repr(value, depth - 1)
            out.append(f"{self._repr(key, depth - 1)}: {shown}")
        return out, more

    def _mapping(self, cls: type, obj: dict[Any, Any], depth: int) -> str:
        # dict.items() on the object itself: the C storage, never a subclass's methods.
        parts, more = self._items(islice(dict.items(obj), self.limits.items + 1), depth)
        body = ", ".join(parts) + (", ..." if more else "")
        text = "{" + body + "}"
        return text if cls is dict else f"{cls.__name__}({text})"

    def _sequence(self, cls: type, obj: Any, depth: int) -> str:
        base = next(b for b in (list, tuple, set, frozenset, deque) if isinstance(obj, b))
        items = []
        for n, item in enumerate(base.__iter__(obj)):
            if n >= self.limits.items:
                items.append("...")
                break
            items.append(self._repr(item, depth - 1))
        size = base.__len__(obj)
        if base is list:
            text = "[" + ", ".join(items) + "]"
        elif base is tuple:
            text = "(" + ", ".join(items) + ("," if size == 1 else "") + ")"
        else:
            text = "{" + ", ".join(items) + "}" if items else "set()"
        if cls not in (list, tuple, set):
            text = f"{cls.__name__}({text})"
        return text if size <= self.limits.items else f"{text} <{size} items>"

    def _object(self, cls: type, obj: Any, depth: int) -> str:
        try:
            attrs = object.__getattribute__(obj, "__dict__")
        except Exception:
            attrs = None
        if not isinstance(attrs, dict):
            return f"<{cls.__module__}.{cls.__qualname__} object at {id(obj):#x}>"
        parts = []
        for n, (key, value) in enumerate(islice(dict.items(attrs), self.limits.items + 1)):
            if n >= self.limits.items:
                parts.append("...")
                break
            secret = self.redact and isinstance(key, str) and is_secret_name(key)
            parts.append(f"{key}={REDACTED if secret else self._repr(value, depth - 1)}")
        return f"{cls.__name__}({', '.join(parts)})"
