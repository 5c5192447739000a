"""Making a chosen thread stop at its next line, or at FILE:LINE, and undoing it all.

* Python 3.12+: ``sys.monitoring`` LINE events, local to the code objects concerned (the
  target thread's stack, or the code holding FILE:LINE), under a tool id of our own.
  Other threads running that code pay one callback per line, only until the hit; the
  events are cleared and the tool id freed the moment it fires or the session ends.
* Python 3.10/3.11: a trace function, installed in the threads already running through
  debugpy's native helper (``foreign_trace.py``) and in threads started later through
  ``threading.settrace``. It is scoped: on each call it only compares the code object
  with the armed ones (other code runs untraced, with no line events), and the frames of
  those code objects already running get a local tracer directly. Each thread drops the
  hook at its next call once the session is over. Where the helper is missing, ``--break``
  reaches threads started from now on only, and ``--thread`` is refused, saying why.

``on_hit(frame)`` runs in the thread that hit, and returns the trace function that thread
should keep (pdb's), or None.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType, FunctionType, MethodType, ModuleType
from typing import Any

from prodbug.agent import foreign_trace, introspect
from prodbug.agent.dap import is_own_thread

__all__ = ["OWN_TRACERS", "Hook", "arm_break", "arm_thread", "find_code", "foreign_tracer",
           "monitoring_available"]

OnHit = Callable[[FrameType], Any]
Report = Callable[[str], None]
_log = logging.getLogger("prodbug.agent")
_TOOL_IDS = (4, 3)  # unassigned by CPython (0 debugger, 1 coverage, 2 profiler, 5 optimizer)
_MAX_CONDITION_REPORTS = 20  # a condition failing on every line must not flood the operator


def monitoring_available() -> bool:
    return hasattr(sys, "monitoring")


class Hook:
    """An armed stop; ``remove()`` undoes it (idempotent, any thread)."""

    def __init__(self, condition: str | None, on_hit: OnHit, *, report: Report | None) -> None:
        self.condition = condition
        self.on_hit = on_hit
        self.report = report
        self.fired = False
        self.condition_error: str | None = None
        self._reports = 0
        #: Which threads the hook can reach, said to the operator (None: any).
        self.reach: str | None = None
        self._lock = threading.Lock()
        self._unhook_lock = threading.Lock()

    def _claim(self, frame: FrameType) -> bool:
        if self.condition:
            try:
                if not eval(self.condition, frame.f_globals, frame.f_locals):  # noqa: S307
                    return False
            except Exception as exc:  # the operator's expression: report, do not stop
                self._condition_failed(exc)
                return False
        with self._lock:
            if self.fired:
                return False
            self.fired = True
        return True

    def _condition_failed(self, exc: Exception) -> None:
        try:
            detail = str(exc)[:200]
        except Exception:  # the operator's exception, with a __str__ of its own
            detail = "?"
        text = f"--condition raised {type(exc).__name__}: {detail}"
        with self._lock:
            if text == self.condition_error or self._reports > _MAX_CONDITION_REPORTS:
                return
            self.condition_error = text
            self._reports += 1
            last = self._reports > _MAX_CONDITION_REPORTS
        if self.report is not None:
            self.report(f"{text} (in thread {threading.current_thread().name!r}); not "
                        f"stopped, the breakpoint stays armed\n" if not last else
                        "--condition keeps raising: further errors are not reported\n")

    def remove(self) -> None:
        with self._lock:
            self.fired = True
        self._unhook()

    def _unhook(self) -> None:
        raise NotImplementedError


class _MonitoringHook(Hook):
    def __init__(self, codes: list[CodeType], line: int | None, thread: int | None,
                 condition: str | None, on_hit: OnHit, *, report: Report | None) -> None:
        super().__init__(condition, on_hit, report=report)
        mon: Any = getattr(sys, "monitoring")  # noqa: B009 (3.12+ only; mypy targets 3.10)
        self._codes = codes
        self._line = line
        self._thread = thread
        self._tool: int | None = None
        for tool in _TOOL_IDS:
            try:
                mon.use_tool_id(tool, "prodbug")
            except ValueError:
                continue
            self._tool = tool
            break
        if self._tool is None:
            raise RuntimeError("every sys.monitoring tool id prodbug may use is taken")
        mon.register_callback(self._tool, mon.events.LINE, self._on_line)
        for code in codes:
            mon.set_local_events(self._tool, code, mon.events.LINE)

    def _on_line(self, code: CodeType, line: int) -> Any:
        if self.fired or (self._line is not None and line != self._line):
            return None
        try:
            self._maybe_stop(code)
        except Exception:  # runs in the host's thread: never let anything escape
            _log.warning("prodbug stop hook failed; the thread goes on", exc_info=True)
            self.remove()
        return None

    def _maybe_stop(self, code: CodeType) -> None:
        if self._thread is not None and threading.get_ident() != self._thread:
            return
        if is_own_thread():  # the agent answers (and ends sessions) whatever pdb does
            return
        frame = sys._getframe(2)  # _maybe_stop <- _on_line <- the running frame
        if frame.f_code is not code or sys.gettrace() is not None:
            return  # another tracer owns this thread: never fight it
        if not self._claim(frame):
            return
        self._unhook()
        self.on_hit(frame)

    def _unhook(self) -> None:
        with self._unhook_lock:  # the agent thread and the hit thread may both get here
            tool, self._tool = self._tool, None
        if tool is None:
            return
        mon: Any = getattr(sys, "monitoring")  # noqa: B009 (3.12+ only; mypy targets 3.10)
        for code in self._codes:
            mon.set_local_events(tool, code, 0)
        mon.register_callback(tool, mon.events.LINE, None)
        mon.free_tool_id(tool)


class _SettraceHook(Hook):
    """3.10/3.11: a scoped trace function in running threads (foreign_trace) and new ones."""

    def __init__(self, codes: list[CodeType], line: int | None, thread: int | None,
                 condition: str | None, on_hit: OnHit, *, report: Report | None) -> None:
        super().__init__(condition, on_hit, report=report)
        if threading.gettrace() is not None:
            raise RuntimeError("another tracer is installed with threading.settrace; "
                               "prodbug will not replace it")
        self._codes = set(codes)
        self._line = line
        self._thread = thread
        self._active = True
        self.reach = "threads started from now on"
        if thread is None:
            threading.settrace(self._global)
        usable, why = foreign_trace.available()
        if not usable:
            if thread is not None:
                self._unhook()
                raise NotImplementedError(
                    f"stopping a running thread on Python {sys.version.split()[0]} needs "
                    f"debugpy's native helper: {why}. Use --break FILE:LINE (threads "
                    f"started from now on), --inspect THREAD or --post-mortem")
            self.reach += f" (running threads cannot be reached here: {why})"
            return
        frames = sys._current_frames()
        # A thread that another tool traces keeps its tracer: installing ours would replace
        # it (arm_thread refuses such a thread outright).
        targets = [thread] if thread is not None else [
            ident for ident in _running_threads() if not foreign_tracer(frames.get(ident))]
        failed = set(foreign_trace.set_trace_in_threads(self._global, targets))
        frames = sys._current_frames()  # again: frames called meanwhile got no call event
        for ident in targets:
            if ident in failed:
                continue
            walk = frames.get(ident)
            while walk is not None:  # frames already running the code get line events
                if walk.f_code in self._codes:
                    walk.f_trace_lines = True
                    walk.f_trace = self._local
                walk = walk.f_back
        del frames
        if thread is not None and failed:
            self._unhook()
            raise NotImplementedError("that thread could not be reached (it may have ended)")
        self.reach = "the thread" if thread is not None else (
            "any thread, running or new; until the line is reached every thread pays a "
            "trace call per function call, which slows call-heavy code several times over")

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            return self._global_checked(frame, event)
        except Exception:  # a trace function's error would reach the host's code
            _log.warning("prodbug trace hook failed; removing it", exc_info=True)
            self._active = False
            sys.settrace(None)
            return None

    def _global_checked(self, frame: FrameType, event: str) -> Any:
        if not self._active or is_own_thread():
            sys.settrace(None)  # session over, or one of ours: this thread drops the hook
            return None
        if event == "call" and frame.f_code in self._codes:
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            if not self._active:
                return None
            if event == "line" and (self._line is None or frame.f_lineno == self._line) \
                    and (self._thread is None or threading.get_ident() == self._thread) \
                    and self._claim(frame):
                self._unhook()
                return self.on_hit(frame)
            return self._local
        except Exception:
            _log.warning("prodbug trace hook failed; removing it", exc_info=True)
            self._unhook()
            return None

    def _unhook(self) -> None:
        self._active = False
        if threading.gettrace() == self._global:
            threading.settrace(None)  # type: ignore[arg-type,unused-ignore]


#: Classes whose bound methods are prodbug's own trace functions (sessions adds its pdb).
OWN_TRACERS: list[type] = [Hook]


def _own_tracer(trace: object) -> bool:
    if trace is foreign_trace._untrace:
        return True
    # Exact types and C members only: the trace function may be any host object.
    return type(trace) is MethodType and any(
        issubclass(type(trace.__self__), own) for own in OWN_TRACERS)


def foreign_tracer(frame: FrameType | None) -> bool:
    """Whether a frame on this stack has a local trace function that is not prodbug's: the
    thread is traced by another tool (a debugger, coverage's tracer), which prodbug never
    takes over. A tracer that asks for no line events leaves no such mark."""
    while frame is not None:
        trace = frame.f_trace
        if trace is not None and not _own_tracer(trace):
            return True
        frame = frame.f_back
    return False


def _running_threads() -> list[int]:
    """Idents of the threads running Python now, prodbug's and the debugger's left out."""
    own = {t.ident for t in threading.enumerate() if is_own_thread(t)}
    return [ident for ident in sys._current_frames() if ident not in own]


def arm_thread(frame: FrameType, thread: int, on_hit: OnHit) -> Hook:
    """Stop thread ``thread`` (whose innermost frame is ``frame``) at its next line.

    Raises NotImplementedError, saying why, where that cannot be done here."""
    if foreign_tracer(frame):
        raise NotImplementedError(
            "that thread is traced by another tool (a debugger, a coverage tracer): "
            "prodbug never takes it over; --inspect THREAD looks at it without stopping it")
    codes = []
    walk: FrameType | None = frame
    while walk is not None:
        if walk.f_code not in codes:
            codes.append(walk.f_code)
        walk = walk.f_back
    if monitoring_available():
        return _MonitoringHook(codes, None, thread, None, on_hit, report=None)
    return _SettraceHook(codes, None, thread, None, on_hit, report=None)


def arm_break(codes: list[CodeType], line: int, condition: str | None, on_hit: OnHit,
              report: Report | None = None) -> Hook:
    """Stop the first thread to reach ``line`` of ``codes`` (for which ``condition``, if
    given, is true); ``report`` is told when ``condition`` raises."""
    if monitoring_available():
        return _MonitoringHook(codes, line, None, condition, on_hit, report=report)
    return _SettraceHook(codes, line, None, condition, on_hit, report=report)


# -- finding the code for FILE:LINE ---------------------------------------------------------

def _nested(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _nested(const)


def _codes_of(obj: Any, seen: set[int], depth: int = 0) -> Iterator[CodeType]:
    # Exact types and C descriptors only: module globals may be lazy proxies whose
    # ``__class__`` or attributes are host code, which the agent thread never runs.
    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    cls = type(obj)
    if cls is FunctionType:
        yield from _nested(obj.__code__)
        wrapped = obj.__dict__.get("__wrapped__")
        if wrapped is not None:
            yield from _codes_of(wrapped, seen, depth + 1)
    elif cls is staticmethod or cls is classmethod:
        yield from _codes_of(obj.__func__, seen, depth + 1)
    elif cls is property:
        for part in (obj.fget, obj.fset, obj.fdel):
            if part is not None:
                yield from _codes_of(part, seen, depth + 1)
    elif introspect.has_base(cls, type):
        namespace = introspect.class_namespace(obj)
        for value in list(namespace.values()):
            yield from _codes_of(value, seen, depth + 1)


def _same_file(filename: str, wanted: str) -> bool:
    if os.path.isabs(wanted):
        return os.path.realpath(filename) == os.path.realpath(wanted)
    return filename == wanted or filename.endswith(os.sep + wanted.lstrip("./"))


def find_code(filename: str, line: int) -> list[CodeType]:
    """Code objects whose lines include ``filename:line``, from loaded modules.

    Raises LookupError with a message that says what was found instead.
    """
    matched_file = False
    found: list[CodeType] = []
    seen: set[int] = set()
    for module in list(sys.modules.values()):
        if type(module) is not ModuleType:  # a lazy module proxy is not looked into
            continue
        namespace = module.__dict__
        path = namespace.get("__file__")
        if type(path) is not str or not _same_file(path, filename):
            continue
        matched_file = True
        name = namespace.get("__name__")
        for value in list(namespace.values()):
            if introspect.has_base(type(value), type) and \
                    introspect.type_module(value) != name:
                continue  # imported classes: their code is found in their own module
            for code in _codes_of(value, seen):
                if not _same_file(code.co_filename, filename) or code in found:
                    continue
                if any(ln == line for _, _, ln in code.co_lines()):
                    found.append(code)
    if found:
        return found
    if not matched_file:
        raise LookupError(f"no loaded module comes from {filename}; give the path as the "
                          f"service sees it (see prodbug stacks for file names)")
    raise LookupError(f"no function in {filename} has code on line {line} (module-level code "
                      f"has already run; blank, comment and 'def' lines have no code)")
