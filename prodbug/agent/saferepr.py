"""Bounded, side-effect-free representations of live objects, with secrets redacted.

No host code runs here: a class's own ``__repr__``, ``__getattr__``, ``__class__``,
``__dict__`` property, properties, ``__iter__`` and its metaclass's hooks are never called
(``introspect`` says how), so an object that blocks, raises, takes a lock or queries a
database when looked at cannot stall or break a dump. Built-in values are rendered by
exact type (subclasses through the built-in's own C code), numpy scalars as their values,
a few stdlib types by their stdlib repr, other objects as ``ClassName(attr=..., ...)`` from
their instance ``__dict__`` and slots. Every output is bounded in characters per value,
items per container, nesting depth and total size. Secrets are redacted by name and by
value (``redact``).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import ipaddress
import pathlib
import re
import sys
import threading
import types
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from prodbug.agent.introspect import (
    MISSING,
    exact_str,
    has_base,
    instance_attr,
    instance_dict,
    mro,
    namespace_get,
    qualified_name,
    slot_descriptors,
    slot_values,
    type_name,
    type_qualname,
)
from prodbug.agent.redact import REDACTED, is_secret_name, is_url_name, mask_text

__all__ = ["BUDGET_SPENT", "REDACTED", "Limits", "SafeRepr", "is_secret_name"]

#: What a value shows once the dump's budget (``Limits.total``) is spent.
BUDGET_SPENT = "<not shown: this dump's budget for locals is spent>"

_LOCK = type(threading.Lock())  # not subclassable
_RLOCK = type(threading.RLock())
#: Exact stdlib types whose repr is stdlib code, bounded, and touches nothing of the host's.
_STDLIB_REPR = frozenset(id(t) for t in (
    datetime.date, datetime.timedelta, decimal.Decimal, uuid.UUID,
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
))
_SEQUENCES: list[tuple[int, Any]] = [(id(t), t) for t in (list, tuple, set, frozenset, deque)]
_SCALAR_BASES: list[tuple[int, Any]] = [
    (id(t), t) for t in (int, float, complex, str, bytes, bytearray)]
_ENUM, _DICT = id(enum.Enum), id(dict)
#: Characters read past what is shown, so that a secret cut by the limit is still seen whole.
_MARGIN = 256
_TAIL = re.compile(r"\S{1,100}\Z")
_PLAIN, _SECRET, _URL = 0, 1, 2  # what a name says about the value it holds
_CACHED = 4096  # entries per cache, per dump
_FUNC_QUALNAME = types.FunctionType.__dict__["__qualname__"].__get__
_METHOD_FUNC = types.MethodType.__dict__["__func__"].__get__
_BUILTIN_NAME = types.BuiltinFunctionType.__dict__["__name__"].__get__


@dataclass(frozen=True)
class Limits:
    """How much one dump may show."""

    chars: int = 200  # per value
    items: int = 10  # per container
    depth: int = 3
    total: int = 64 * 1024  # per dump, all values together


@dataclass(frozen=True)
class _Numpy:
    """numpy's own scalar types (by id) and the C getsets that describe an array."""

    module: types.ModuleType
    kinds: dict[int, str]  # id(scalar type) -> "int", "float", "bool", "complex", "str", "bytes"
    ndarray: type | None
    shape: Any  # getset descriptors, called directly
    dtype: Any
    dtype_type: Any  # member descriptor: a dtype's scalar type
    keep: tuple[type, ...]  # holds the types whose ids ``kinds`` uses


_numpy_seen: list[_Numpy | None] = [None]


def _scan_numpy(module: types.ModuleType) -> _Numpy | None:
    names = instance_dict(module)
    if names is None:
        return None
    bases: list[tuple[str, Any]] = [(kind, dict.get(names, attr)) for kind, attr in (
        ("bool", "bool_"), ("int", "integer"), ("float", "floating"),
        ("complex", "complexfloating"), ("str", "str_"), ("bytes", "bytes_"))]
    bases = [(kind, base) for kind, base in bases if has_base(type(base), type)]
    # Subclasses of ``integer`` whose int() loses their meaning (units).
    skip = [dict.get(names, "timedelta64"), dict.get(names, "datetime64")]
    scalars = dict.get(names, "sctypeDict")
    if type(scalars) is not dict:
        return None
    kinds: dict[int, str] = {}
    keep: list[type] = []
    for scalar in list(dict.values(scalars)):
        if not has_base(type(scalar), type) or any(scalar is s for s in skip):
            continue
        for kind, base in bases:
            if has_base(scalar, base):
                kinds[id(scalar)] = kind
                keep.append(scalar)
                break
    ndarray: Any = dict.get(names, "ndarray")
    dtype: Any = dict.get(names, "dtype")
    if not has_base(type(ndarray), type) or not has_base(type(dtype), type):
        return _Numpy(module, kinds, None, None, None, None, tuple(keep))
    shape = namespace_get(ndarray, "shape")
    dtype_get = namespace_get(ndarray, "dtype")
    dtype_type = namespace_get(dtype, "type")
    if type(shape) is not types.GetSetDescriptorType or \
            type(dtype_get) is not types.GetSetDescriptorType or \
            type(dtype_type) is not types.MemberDescriptorType:
        ndarray = None
    return _Numpy(module, kinds, ndarray, shape, dtype_get, dtype_type,
                  (*keep, ndarray, dtype))


def _numpy() -> _Numpy | None:
    """numpy's types if the host imported numpy (never imported here)."""
    module = dict.get(sys.modules, "numpy") if type(sys.modules) is dict else None
    if module is None or type(module) is not types.ModuleType:
        return None
    seen = _numpy_seen[0]
    if seen is None or seen.module is not module:
        seen = _scan_numpy(module)
        if seen is not None and seen.ndarray is not None:
            _numpy_seen[0] = seen  # complete: numpy is not half imported (in another thread)
    return seen


def _name_text(key: Any) -> str | None:
    """A key or attribute name as text, for the secret-name check (str or bytes only)."""
    if type(key) is str:
        return key[:128]
    if has_base(type(key), str):
        return str.__getitem__(key, slice(0, 128))  # str's C code: a plain str
    if has_base(type(key), bytes) or type(key) is bytearray:
        try:
            return bytes(bytes.__getitem__(key, slice(0, 128)) if type(key) is not bytearray
                         else key[:128]).decode("latin-1")
        except Exception:
            return None
    return None


@dataclass
class SafeRepr:
    """One dump's formatter: keeps the running total so the whole dump stays bounded."""

    limits: Limits = field(default_factory=Limits)
    redact: bool = True
    used: int = 0
    # Per dump, by id: (the class itself, so the id stays its own; what is known of it).
    _ancestry: dict[int, tuple[type, frozenset[int]]] = field(default_factory=dict, repr=False)
    _slots: dict[int, tuple[type, list[tuple[str, Any]]]] = field(default_factory=dict,
                                                                 repr=False)
    _names: dict[str, int] = field(default_factory=dict, repr=False)  # name -> _PLAIN ...

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limits.total

    @property
    def _window(self) -> slice:
        """How much of a long text or bytes value is read (and checked for secrets); one
        more character than that tells ``_masked`` the value was cut."""
        return slice(0, self.limits.chars + _MARGIN + 1)

    def value(self, name: Any, obj: Any) -> str:
        """The representation of variable ``name`` (redacted if it looks secret), or
        ``BUDGET_SPENT`` once the dump's total is reached."""
        if self.exhausted:
            return BUDGET_SPENT
        try:
            text = self._field(name, obj, self.limits.depth)
        except Exception as exc:  # e.g. a container changing under us
            text = f"<unrepresentable: {type_name(type(exc))}>"
        text = self._cut(text)
        self.used += len(text)
        return text

    def name(self, name: Any) -> str:
        """A local's or attribute's name as shown (plain text, never a subclass's ``__str__``)."""
        text = exact_str(name)
        if text is None:
            return self._cut(self._repr(name, 0))
        return self._cut(text)

    def _cut(self, text: str) -> str:
        if len(text) > self.limits.chars:
            return text[: self.limits.chars - 3] + "..."
        return text

    def _field(self, name: Any, obj: Any, depth: int) -> str:
        """``obj`` held under ``name`` (a variable, dict key, attribute, header name)."""
        kind = self._name_kind(name) if self.redact else _PLAIN
        if kind == _SECRET:
            return REDACTED
        return self._repr(obj, depth, strict=kind == _URL)

    def _name_kind(self, name: Any) -> int:
        text = _name_text(name)
        if text is None:
            return _PLAIN
        kind = self._names.get(text)
        if kind is None:
            kind = _SECRET if is_secret_name(text) else _URL if is_url_name(text) else _PLAIN
            if len(self._names) < _CACHED:
                self._names[text] = kind
        return kind

    def _bases(self, cls: type) -> frozenset[int]:
        """The ids of ``cls``'s MRO: ``id(base) in`` it is ``issubclass``, run no code."""
        known = self._ancestry.get(id(cls))
        if known is None or known[0] is not cls:
            known = (cls, frozenset(id(klass) for klass in mro(cls)))
            if len(self._ancestry) < _CACHED:
                self._ancestry[id(cls)] = known
        return known[1]

    def _slot_values(self, obj: Any, limit: int) -> list[tuple[str, Any]]:
        cls = type(obj)
        known = self._slots.get(id(cls))
        if known is None or known[0] is not cls:
            known = (cls, slot_descriptors(cls))
            if len(self._slots) < _CACHED:
                self._slots[id(cls)] = known
        return slot_values(obj, limit, known[1]) if known[1] else []

    # -- values by kind ---------------------------------------------------------------------

    def _int(self, value: int) -> str:
        bits = int.bit_length(value)
        return int.__repr__(value) if bits <= 256 else f"<int of {bits} bits>"

    def _masked(self, text: str, strict: bool) -> tuple[str | None, bool]:
        """``text`` cut to a bounded window with its secrets masked (None: all of it is one);
        and whether its end, cut off, must be marked."""
        window = self.limits.chars + _MARGIN
        cut = len(text) > window
        shown = text[:window]
        if not self.redact:
            return shown, False
        shown = mask_text(shown, strict=strict, cut=cut)
        if strict and shown == REDACTED:
            return None, False
        if cut and len(shown) < self.limits.chars:
            # Masking shrank the text so far that the window's end shows: drop its last
            # word, which may be the first characters of a credential.
            return _TAIL.sub("", shown), True
        return shown, False

    def _str(self, text: str, strict: bool = False) -> str:
        shown, more = self._masked(text, strict)
        return REDACTED if shown is None else repr(shown) + ("..." if more else "")

    def _bytes(self, data: bytes, strict: bool = False) -> str:
        shown, more = self._masked(data.decode("latin-1"), strict)
        if shown is None:
            return REDACTED
        return repr(shown.encode("latin-1")) + ("..." if more else "")

    def _repr(self, obj: Any, depth: int, strict: bool = False) -> str:
        cls = type(obj)
        if obj is None or cls is bool or cls is float or cls is complex:
            return repr(obj)
        if cls is int:
            return self._int(obj)
        if cls is str:
            return self._str(obj, strict)
        if cls is bytes or cls is bytearray:
            text = self._bytes(bytes(obj[self._window]), strict)
            return text if cls is bytes or text == REDACTED else f"bytearray({text})"
        if id(cls) in _STDLIB_REPR:
            return repr(obj)
        bases = self._bases(cls)
        if _ENUM in bases:
            member = exact_str(instance_attr(obj, "_name_"))
            return f"{type_qualname(cls)}.{member or '?'}"
        numpy = _numpy()
        if numpy is not None:
            shown = self._numpy(numpy, cls, obj, strict)
            if shown is not None:
                return shown
        simple = self._stdlib(cls, bases, obj, depth)
        if simple is not None:
            return simple
        for base_id, base in _SCALAR_BASES:
            if base_id in bases:
                return f"{type_name(cls)}({self._scalar(base, obj, strict)})"
        if depth <= 0:
            return f"<{type_qualname(cls)}>"
        if _DICT in bases:
            return self._mapping(cls, obj, depth)
        for base_id, base in _SEQUENCES:
            if base_id in bases:
                return self._sequence(cls, base, obj, depth)
        return self._object(cls, obj, depth)

    def _scalar(self, base: Any, obj: Any, strict: bool) -> str:
        """A subclass of a built-in scalar, through the built-in's own C code."""
        if base is int:
            return self._int(int.__index__(obj))
        if base is float:
            return float.__repr__(obj)
        if base is complex:
            return complex.__repr__(obj)
        if base is str:
            return self._str(str.__getitem__(obj, self._window), strict)
        return self._bytes(bytes(base.__getitem__(obj, self._window)), strict)

    def _numpy(self, numpy: _Numpy, cls: type, obj: Any, strict: bool) -> str | None:
        kind = numpy.kinds.get(id(cls))
        if kind == "int":
            return self._int(int(obj))  # numpy's own C conversion: exact numpy type
        if kind == "float":
            return repr(float(obj))
        if kind == "bool":
            return repr(bool(obj))
        if kind == "complex":
            return repr(complex(obj))
        if kind == "str":
            return self._str(str.__getitem__(obj, self._window), strict)
        if kind == "bytes":
            return self._bytes(bytes.__getitem__(obj, self._window), strict)
        if numpy.ndarray is not None and cls is numpy.ndarray:
            shape = numpy.shape.__get__(obj, cls)
            scalar = numpy.dtype_type.__get__(numpy.dtype.__get__(obj, cls))
            dims = ", ".join(self._int(n) for n in shape if type(n) is int)
            dims += "," if len(shape) == 1 else ""
            return f"ndarray(shape=({dims}), dtype={type_name(scalar)})"
        return None

    def _stdlib(self, cls: type, bases: frozenset[int], obj: Any, depth: int) -> str | None:
        """Stdlib types whose own repr could run host code or take unbounded time."""
        if cls is datetime.datetime or cls is datetime.time:
            return self._clock(cls, obj)
        if cls is datetime.timezone:
            name = datetime.timezone.tzname(obj, None)
            return repr(obj) if type(name) is str else "<datetime.timezone>"
        if cls is fractions.Fraction:
            parts = dict(self._slot_values(obj, 2))
            return f"Fraction({self._repr(parts.get('_numerator'), 0)}, " \
                   f"{self._repr(parts.get('_denominator'), 0)})"
        if cls is range:
            return f"range({self._int(obj.start)}, {self._int(obj.stop)}, {self._int(obj.step)})"
        if cls is slice:
            inner = ", ".join(self._repr(v, depth - 1) for v in (obj.start, obj.stop, obj.step))
            return f"slice({inner})"
        if cls is _LOCK:
            return _LOCK.__repr__(obj)  # C: bounded, no host code
        if id(_RLOCK) in bases:
            return _RLOCK.__repr__(obj)  # the C repr, even for a subclass that overrides it
        if cls is types.FunctionType:
            return f"<function {exact_str(_FUNC_QUALNAME(obj)) or '?'}>"
        if cls is types.MethodType:
            func = _METHOD_FUNC(obj)
            method = exact_str(_FUNC_QUALNAME(func)) if type(func) is types.FunctionType else None
            return f"<bound method {method or '?'}>"
        if cls is types.BuiltinFunctionType:
            return f"<built-in function {exact_str(_BUILTIN_NAME(obj)) or '?'}>"
        if id(types.ModuleType) in bases:
            return f"<module {exact_str(instance_attr(obj, '__name__')) or '?'!r}>"
        if id(type) in bases:
            return f"<class {qualified_name(obj)}>"
        return None

    def _clock(self, cls: type, obj: Any) -> str:
        tz = obj.tzinfo  # exact datetime/time: a C getset
        if tz is None or (type(tz) is datetime.timezone and
                          type(datetime.timezone.tzname(tz, None)) is str):
            return repr(obj)
        zoneinfo = dict.get(sys.modules, "zoneinfo") if type(sys.modules) is dict else None
        zone = instance_attr(zoneinfo, "ZoneInfo") if zoneinfo is not None else None
        if zone is not None and type(tz) is zone and type(tz.key) is str:
            return repr(obj)  # stdlib's ZoneInfo(key='...')
        naive = repr(obj.replace(tzinfo=None))  # exact type: C, no subclass constructor
        return f"{naive[:-1]}, tzinfo=<{qualified_name(type(tz))}>)"

    # -- containers and objects -------------------------------------------------------------

    def _mapping(self, cls: type, obj: dict[Any, Any], depth: int) -> str:
        # dict.items() on the object itself: the C storage, never a subclass's methods.
        parts = []
        for n, (key, value) in enumerate(islice(dict.items(obj), self.limits.items + 1)):
            if n >= self.limits.items:
                parts.append("...")
                break
            parts.append(f"{self._repr(key, depth - 1)}: {self._field(key, value, depth - 1)}")
        text = "{" + ", ".join(parts) + "}"
        return text if cls is dict else f"{type_name(cls)}({text})"

    def _sequence(self, cls: type, base: Any, obj: Any, depth: int) -> str:
        values = list(islice(base.__iter__(obj), self.limits.items + 1))
        size = base.__len__(obj)
        fields = self._fields(cls) if base is tuple and cls is not tuple else None
        if fields is not None:  # a namedtuple: Point(x=1, y=2)
            parts = [f"{name}={self._field(name, value, depth - 1)}"
                     for name, value in zip(fields, values[: self.limits.items], strict=False)]
            more = ", ..." if len(values) > self.limits.items else ""
            return f"{type_name(cls)}({', '.join(parts)}{more})"
        shown = [self._repr(v, depth - 1) for v in values[: self.limits.items]]
        if (base is tuple or base is list) and len(values) == len(shown) == 2:
            # A header or setting pair: ("Authorization", "Bearer ..."), ("password", x).
            shown[1] = self._field(values[0], values[1], depth - 1)
        if len(values) > self.limits.items:
            shown.append("...")
        if base is list:
            text = "[" + ", ".join(shown) + "]"
        elif base is tuple:
            text = "(" + ", ".join(shown) + ("," if size == 1 else "") + ")"
        else:
            text = "{" + ", ".join(shown) + "}" if shown else "set()"
        if cls is not list and cls is not tuple and cls is not set:
            text = f"{type_name(cls)}({text})"
        return text if size <= self.limits.items else f"{text} <{size} items>"

    def _fields(self, cls: type) -> list[str] | None:
        for klass in mro(cls):
            fields = namespace_get(klass, "_fields")
            if fields is MISSING:
                continue
            if type(fields) is not tuple or not all(type(f) is str for f in fields):
                return None
            return list(fields)
        return None

    def _object(self, cls: type, obj: Any, depth: int) -> str:
        limit = self.limits.items
        attrs = instance_dict(obj)
        pairs = list(islice(dict.items(attrs), limit + 1)) if attrs is not None else []
        if len(pairs) <= limit:
            pairs += self._slot_values(obj, limit + 1 - len(pairs))
        if attrs is None and not pairs:
            return f"<{qualified_name(cls)} object at {id(obj):#x}>"
        parts = []
        for n, (key, value) in enumerate(pairs):
            if n >= limit:
                parts.append("...")
                break
            parts.append(f"{self.name(key)}={self._field(key, value, depth - 1)}")
        return f"{type_name(cls)}({', '.join(parts)})"

