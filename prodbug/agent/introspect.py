"""Reading live host objects without running any of the host's code.

The ordinary ways to look at an object run code its class chose: ``isinstance`` reads
``obj.__class__`` (a property on lazy proxies such as Django's ``SimpleLazyObject`` or
werkzeug's ``LocalProxy``, which evaluates them: a database query, a context lookup);
``getattr``/``hasattr`` run ``__getattribute__``, ``__getattr__``, properties and a
metaclass's ``__getattr__``; ``cls.__mro__``/``cls.__dict__`` may be metaclass properties;
``==``, ``hash`` and ``in`` on a class run its metaclass's ``__eq__``/``__hash__``; ``repr``,
``str`` and f-strings of a subclass run its overrides. Run in the agent thread, any of them
can stall the agent (forever, if it never returns) or do things in the host's name.

So everything here starts from ``type(obj)`` (a C slot), reads the MRO and class
namespaces through ``type``'s own descriptors (never the metaclass's), compares classes by
identity only, and reads instance state only through C descriptors (getsets, members) that
are the genuine C types, called explicitly. What cannot be read this way is not read.
"""

from __future__ import annotations

import linecache
import sys
import types
from itertools import islice
from types import FrameType
from typing import Any

__all__ = [
    "MISSING", "class_namespace", "exact_int", "exact_str", "frame_local", "frame_locals",
    "has_base", "has_descriptor", "instance_attr", "instance_dict", "lookup", "mro",
    "namespace_get", "qualified_name", "slot_descriptors", "slot_values", "source_line",
    "source_lines", "type_module", "type_name", "type_qualname",
]

MISSING: Any = object()

# ``type``'s own C descriptors: called directly, a metaclass cannot override them.
_MRO = type.__dict__["__mro__"].__get__
_NAMESPACE = type.__dict__["__dict__"].__get__  # class -> mappingproxy of its real dict
_NAME = type.__dict__["__name__"].__get__
_QUALNAME = type.__dict__["__qualname__"].__get__
_MODULE = type.__dict__["__module__"].__get__
_GETSET = types.GetSetDescriptorType
_MEMBER = types.MemberDescriptorType


def _locals_type() -> type:
    return type(sys._getframe().f_locals)


#: What ``frame.f_locals`` is for a function frame: ``dict`` before 3.13, then the C
#: ``FrameLocalsProxy`` (whose methods are C code too).
_LOCALS_PROXY = _locals_type()


def mro(cls: type) -> tuple[type, ...]:
    """``cls.__mro__`` read from the type's C slot (a metaclass's ``__mro__`` never runs)."""
    try:
        found = _MRO(cls)
    except Exception:
        return (cls,)
    return found if type(found) is tuple else (cls,)


def has_base(cls: type, base: type) -> bool:
    """``issubclass(cls, base)`` by identity along the MRO (no ``__subclasscheck__``)."""
    return any(klass is base for klass in mro(cls))


def namespace_get(cls: type, name: str, default: Any = MISSING) -> Any:
    """``cls.__dict__.get(name)`` through ``type``'s own ``__dict__`` descriptor."""
    try:
        return _NAMESPACE(cls).get(name, default)
    except Exception:
        return default


def class_namespace(cls: type) -> dict[str, Any]:
    """A copy of ``cls.__dict__`` read through ``type``'s own descriptor (empty on error)."""
    try:
        return dict(_NAMESPACE(cls))
    except Exception:
        return {}


def has_descriptor(value: Any) -> bool:
    """Whether ``value``'s type defines ``__get__`` (so reading it from a class runs code)."""
    return any(namespace_get(klass, "__get__") is not MISSING for klass in mro(type(value)))


def exact_str(value: Any) -> str | None:
    """``value`` as a plain ``str`` (a subclass is copied by ``str``'s C code), else None."""
    if type(value) is str:
        return value
    if has_base(type(value), str):
        try:
            return str.__str__(value)
        except Exception:
            return None
    return None


def exact_int(value: Any) -> int | None:
    """``value`` if it is a plain ``int`` (never a subclass, never ``bool``), else None."""
    return value if type(value) is int else None


def _text(value: Any, default: str) -> str:
    text = exact_str(value)
    return default if text is None else text


def _type_text(getter: Any, cls: type) -> str:
    """A class's name-like slot read through ``type``'s own descriptor, or ``?``."""
    try:
        return _text(getter(cls), "?")
    except Exception:
        return "?"


def type_name(cls: type) -> str:
    """``cls.__name__`` without the metaclass."""
    return _type_text(_NAME, cls)


def type_qualname(cls: type) -> str:
    """``cls.__qualname__`` without the metaclass."""
    return _type_text(_QUALNAME, cls)


def type_module(cls: type) -> str:
    """``cls.__module__`` without the metaclass (a non-str value shows as ``?``)."""
    return _type_text(_MODULE, cls)


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, for display."""
    return f"{type_module(cls)}.{type_qualname(cls)}"


def instance_dict(obj: Any) -> dict[Any, Any] | None:
    """``obj.__dict__`` through the type's own C descriptor, or None.

    The first ``__dict__`` on the MRO decides: a genuine C getset or member is called
    directly; anything else (a property a class defines, say) is never called.
    """
    cls = type(obj)
    for klass in mro(cls):
        descr = namespace_get(klass, "__dict__")
        if descr is MISSING:
            continue
        kind = type(descr)
        if kind is not _GETSET and kind is not _MEMBER:
            return None
        try:
            found = kind.__get__(descr, obj, cls)
        except Exception:
            return None
        return found if has_base(type(found), dict) else None
    return None


def instance_attr(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` from the instance ``__dict__`` only (no class attributes, no code)."""
    attrs = instance_dict(obj)
    if attrs is None:
        return default
    return dict.get(attrs, name, default)


def slot_descriptors(cls: type, limit: int = 64) -> list[tuple[str, Any]]:
    """Up to ``limit`` (name, C member descriptor) pairs of ``cls``'s ``__slots__``."""
    out: list[tuple[str, Any]] = []
    for klass in mro(cls):
        slots = namespace_get(klass, "__slots__")
        if type(slots) is str:
            names: Any = (slots,)
        elif type(slots) is tuple or type(slots) is list:
            names = slots
        elif type(slots) is dict:
            names = list(dict.keys(slots))
        else:
            continue
        for name in islice(names, limit):
            if type(name) is not str or name in ("__dict__", "__weakref__"):
                continue
            stored = name
            if name.startswith("__") and not name.endswith("__"):
                stored = f"_{type_name(klass).lstrip('_')}{name}"  # private names are mangled
            descr = namespace_get(klass, stored)
            if type(descr) is _MEMBER:
                out.append((name, descr))
                if len(out) >= limit:
                    return out
    return out


def slot_values(obj: Any, limit: int,
                descriptors: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """Up to ``limit`` set ``__slots__`` of ``obj``, read through their C member descriptors
    (``descriptors``: ``slot_descriptors(type(obj))``, if already known)."""
    cls = type(obj)
    out: list[tuple[str, Any]] = []
    for name, descr in slot_descriptors(cls) if descriptors is None else descriptors:
        try:
            out.append((name, _MEMBER.__get__(descr, obj, cls)))
        except AttributeError:  # an unset slot
            continue
        if len(out) >= limit:
            break
    return out


def lookup(obj: Any, name: str) -> Any:
    """``obj.name`` through instance and class dictionaries only; ``MISSING`` if it would
    take a descriptor (property, method, ...) to produce it."""
    attrs = instance_dict(obj)
    if attrs is not None:
        value = dict.get(attrs, name, MISSING)
        if value is not MISSING:
            return value
    # A class's attribute lives on its own MRO; an instance's on its type's.
    owner = obj if has_base(type(obj), type) else type(obj)
    for klass in mro(owner):
        value = namespace_get(klass, name)
        if value is not MISSING:
            return MISSING if has_descriptor(value) else value
    return MISSING


def frame_locals(frame: FrameType, limit: int) -> list[tuple[Any, Any]] | None:
    """Up to ``limit`` (name, value) pairs of a frame's locals, or None if reading them
    would run code (a class body whose metaclass ``__prepare__`` gave a custom mapping)."""
    try:
        scope = frame.f_locals
    except Exception:
        return None
    kind = type(scope)
    try:
        if has_base(kind, dict):
            return list(islice(dict.items(scope), limit))
        if kind is _LOCALS_PROXY:
            return list(islice(kind.items(scope), limit))
    except Exception:
        return None
    return None


def frame_local(frame: FrameType, name: str) -> Any:
    """One local of a frame, or ``MISSING`` (also when reading it would run code)."""
    try:
        scope = frame.f_locals
    except Exception:
        return MISSING
    kind = type(scope)
    try:
        if has_base(kind, dict):
            return dict.get(scope, name, MISSING)
        if kind is _LOCALS_PROXY:
            return kind.get(scope, name, MISSING)
    except Exception:
        return MISSING
    return MISSING


def source_lines(filename: str) -> list[str]:
    """``linecache.getlines(filename)``, except where that would call the host's code: a
    lazy entry (a module's loader registered by ``traceback``) runs that loader's
    ``get_source``; such files show no source."""
    entry = dict.get(linecache.cache, filename) if type(linecache.cache) is dict else None
    if type(entry) is tuple and len(entry) == 1:
        return []
    try:
        return linecache.getlines(filename)
    except Exception:  # an unreadable file must not break a dump
        return []


def source_line(filename: str, lineno: int) -> str:
    """One line of source (with its newline), or ``""``: see ``source_lines``."""
    lines = source_lines(filename)
    return lines[lineno - 1] if 1 <= lineno <= len(lines) else ""
