"""The prodbug wire protocol: message types, encoding and decoding.

Pure data: no sockets, no zmq, no I/O. ``docs/protocol.md`` is the prose
version of this module and the two must agree (a test checks its examples).

Every message is one ZeroMQ frame holding a UTF-8 JSON object. A request::

    {"prodbug": 1, "id": "7f3a", "cmd": "stacks", "args": {}}

and its reply, either ``{"prodbug": 1, "id": "7f3a", "ok": true, "result": {...}}``
or ``{"prodbug": 1, "id": "7f3a", "ok": false, "error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from prodbug.errors import ProtocolError

__all__ = [
    "COMMANDS",
    "ERROR_CODES",
    "MAX_ID_LENGTH",
    "PROTOCOL_VERSION",
    "ROLES",
    "SUPPORTED_VERSIONS",
    "ErrorInfo",
    "Event",
    "Reply",
    "Request",
    "decode_message",
    "decode_reply",
    "decode_request",
    "encode_event",
    "encode_reply",
    "encode_request",
    "error_reply",
    "role_allows",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
MAX_ID_LENGTH: Final = 64

#: Roles in increasing order of power: a debugger may do all an observer may.
ROLES: Final = ("observer", "debugger")

#: Every command the agent knows, and the least role that may run it.
COMMANDS: Final[dict[str, str]] = {
    "ping": "observer",
    "info": "observer",
    "stacks": "observer",
    "ps": "observer",
    "audit": "debugger",
    "pdb.open": "debugger",
    "session.input": "debugger",
    # Any role's own sessions (a profile is an observer's); the session must be the key's.
    "session.ping": "observer",
    "session.close": "observer",
    "probe.open": "debugger",
    "profile.open": "observer",
    "memory": "observer",
    "memory.open": "observer",
    "dap.open": "debugger",
    "dap.connect": "debugger",
    "dap.send": "debugger",
    "dap.disconnect": "debugger",
}

ERROR_CODES: Final[dict[str, str]] = {
    "bad_request": "the message is not a valid request (not JSON, wrong fields or types)",
    "version_mismatch": "the request's protocol version is not one the agent speaks",
    "unknown_command": "the agent has no command of that name",
    "forbidden": "the client's role may not run this command",
    "internal_error": "the command failed inside the agent; the host is unaffected",
    "busy": "another debugger session is open in this process",
    "unsupported": "this Python cannot do that (the message names the version needed)",
    "not_found": "no such thread, file, line or session",
    "confirm_needed": "the command slows the whole process down; ask again with confirm",
    "not_ready": "debugpy is still starting (or failed to start); the message says which",
    "no_member": "no process of that pid in this service (the message lists the members)",
    "member_gone": "the process exited, or did not answer, before replying",
}


class _Record:
    """An immutable message record: what ``@dataclass(frozen=True)`` would give (keyword
    or positional construction, equality, repr), written out because importing dataclasses
    (inspect, ast, dis and tokenize behind it) costs every command line ~10 ms."""

    __slots__: tuple[str, ...] = ()

    def _init(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable fields (dicts), as a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Request(_Record):
    """A client's request: a command name, its arguments and a correlation id."""

    __slots__ = ("args", "cmd", "id", "pid", "version", "via")
    id: str
    cmd: str
    args: dict[str, Any]
    version: int
    #: Which process of the service should serve it (None: the one that received it).
    pid: int | None
    #: Set by the service's door when it relays a request to another process: who asked
    #: (``key``: the operator's public key, ``name``, ``role``) and the door's ``pid``.
    #: Accepted only from the service's own processes (ipc), never over TCP.
    via: dict[str, Any] | None

    def __init__(self, id: str, cmd: str, args: dict[str, Any] | None = None,  # noqa: PLR0917
                 version: int = PROTOCOL_VERSION, pid: int | None = None,
                 via: dict[str, Any] | None = None) -> None:
        self._init(id=id, cmd=cmd, args={} if args is None else args, version=version,
                   pid=pid, via=via)


class ErrorInfo(_Record):
    """Why a request failed: a stable ``code`` and a human ``message``."""

    __slots__ = ("code", "details", "message")
    code: str
    message: str
    details: dict[str, Any]

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        self._init(code=code, message=message, details={} if details is None else details)


class Reply(_Record):
    """The agent's answer to one request: a result, or an error."""

    __slots__ = ("error", "id", "result", "version")
    id: str
    result: dict[str, Any] | None
    error: ErrorInfo | None
    version: int

    def __init__(self, id: str, result: dict[str, Any] | None = None,
                 error: ErrorInfo | None = None, version: int = PROTOCOL_VERSION) -> None:
        self._init(id=id, result=result, error=error, version=version)

    @property
    def ok(self) -> bool:
        return self.error is None


class Event(_Record):
    """A message the agent sends without being asked: a session's output or its end."""

    __slots__ = ("data", "kind", "session", "version")
    session: str
    kind: str  # "output" | "state"
    data: dict[str, Any]
    version: int

    def __init__(self, session: str, kind: str, data: dict[str, Any] | None = None,
                 version: int = PROTOCOL_VERSION) -> None:
        self._init(session=session, kind=kind, data={} if data is None else data,
                   version=version)


def role_allows(role: str, cmd: str) -> bool:
    """Whether ``role`` may run ``cmd`` (unknown roles and commands may not)."""
    needed = COMMANDS.get(cmd)
    if needed is None or role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def _dumps(obj: dict[str, Any]) -> bytes:
    # default=repr: a result may hold an odd object; the reply must still go out.
    return json.dumps(obj, separators=(",", ":"), default=repr).encode()


def _loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # "[" * 100000 fits in one frame; json recurses once per level
        raise ProtocolError(f"{what} is nested too deeply to decode") from None
    except MemoryError:  # the peer must get an answer, and the host must not see this
        raise ProtocolError(f"{what} is too large to decode in memory") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def _check_id(obj: dict[str, Any]) -> str:
    rid = obj.get("id", "")
    if not isinstance(rid, str) or len(rid) > MAX_ID_LENGTH:
        raise ProtocolError(f'"id" must be a string of at most {MAX_ID_LENGTH} characters')
    return rid


def encode_request(request: Request) -> bytes:
    """Encode ``request`` as one frame."""
    obj: dict[str, Any] = {"prodbug": request.version, "id": request.id, "cmd": request.cmd,
                           "args": request.args}
    if request.pid is not None:
        obj["pid"] = request.pid
    if request.via is not None:
        obj["via"] = request.via
    return _dumps(obj)


def _check_via(via: Any, rid: str) -> dict[str, Any] | None:
    if via is None:
        return None
    if not isinstance(via, dict) or not all(
            isinstance(via.get(k), str) for k in ("key", "name", "role")) \
            or via["role"] not in ROLES or type(via.get("door")) is not int:
        raise ProtocolError('"via" must be {"key", "name", "role", "door"} (role one of '
                            f"{', '.join(ROLES)}, door a pid)", request_id=rid)
    return {k: via[k] for k in ("key", "name", "role", "door")}


def decode_request(data: bytes) -> Request:
    """Decode one request frame.

    Raises ``ProtocolError`` with ``code`` ``bad_request`` or ``version_mismatch``;
    its ``request_id`` carries the id when it could be read.
    """
    obj = _loads(data, "request")
    rid = _check_id(obj)  # first: every later error can carry it back to the client
    version = obj.get("prodbug")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError('request has no integer "prodbug" version field', request_id=rid)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            f"protocol version {version} is not supported; this agent speaks "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade the older side",
            code="version_mismatch",
            request_id=rid,
        )
    cmd = obj.get("cmd")
    args = obj.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError('request has no "cmd" string', request_id=rid)
    if not isinstance(args, dict):
        raise ProtocolError('"args" must be a JSON object', request_id=rid)
    pid = obj.get("pid")
    if pid is not None and (type(pid) is not int or not 0 < pid < 1 << 31):
        raise ProtocolError('"pid" must be a process id (a positive integer)', request_id=rid)
    return Request(id=rid, cmd=cmd, args=args, version=version, pid=pid,
                   via=_check_via(obj.get("via"), rid))


def encode_reply(reply: Reply) -> bytes:
    """Encode ``reply`` as one frame."""
    obj: dict[str, Any] = {"prodbug": reply.version, "id": reply.id, "ok": reply.ok}
    if reply.error is not None:
        err: dict[str, Any] = {"code": reply.error.code, "message": reply.error.message}
        if reply.error.details:
            err["details"] = reply.error.details
        obj["error"] = err
    else:
        obj["result"] = reply.result if reply.result is not None else {}
    return _dumps(obj)


def decode_reply(data: bytes) -> Reply:
    """Decode one reply frame; raises ``ProtocolError`` when it is malformed."""
    obj = _loads(data, "reply")
    version = obj.get("prodbug")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError('reply has no integer "prodbug" version field')
    rid = _check_id(obj)
    ok = obj.get("ok")
    if ok is True:
        result = obj.get("result", {})
        if not isinstance(result, dict):
            raise ProtocolError('reply "result" must be a JSON object')
        return Reply(id=rid, result=result, version=version)
    if ok is False:
        err = obj.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise ProtocolError('error reply has no "error" object with a "code"')
        details = err.get("details", {})
        return Reply(
            id=rid,
            error=ErrorInfo(
                code=err["code"],
                message=str(err.get("message", "")),
                details=details if isinstance(details, dict) else {},
            ),
            version=version,
        )
    raise ProtocolError('reply "ok" must be true or false')


def encode_event(event: Event) -> bytes:
    """Encode an agent-initiated event as one frame."""
    return _dumps({"prodbug": event.version, "event": event.kind, "session": event.session,
                   **event.data})


def decode_message(data: bytes) -> Reply | Event:
    """Decode what an agent sends: a reply, or (during a session) an event."""
    obj = _loads(data, "message")
    if "event" in obj:
        kind, session = obj.get("event"), obj.get("session")
        if not isinstance(kind, str) or not isinstance(session, str):
            raise ProtocolError('event needs "event" and "session" strings')
        version = obj.get("prodbug")
        rest = {k: v for k, v in obj.items() if k not in ("prodbug", "event", "session")}
        return Event(session=session, kind=kind, data=rest,
                     version=version if isinstance(version, int) else PROTOCOL_VERSION)
    return decode_reply(data)


def error_reply(rid: str, code: str, message: str, **details: Any) -> Reply:
    """Build an error reply."""
    return Reply(id=rid, error=ErrorInfo(code=code, message=message, details=details))
