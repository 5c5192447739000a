"""What a handler gets: one request with everything known about it, and the handler table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from prodbug.errors import BadRequest
from prodbug.keys import AuthorizedKey

__all__ = ["Handler", "RequestContext", "Route", "number_arg"]

#: Where replies and session events for one operator go: the socket and its routing id.
Route = tuple[zmq.Socket[bytes], bytes]


@dataclass
class RequestContext:
    """One request being served.

    ``key`` is who asked (for a request relayed by the service's door: the operator's key
    as the door saw it); ``audit`` collects extra fields for the request's audit record.
    """

    id: str
    cmd: str
    args: dict[str, Any]
    key: AuthorizedKey
    route: Route | None = None
    #: The pid of the service's door that relayed this request, if one did.
    via: int | None = None
    audit: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[RequestContext], dict[str, Any]]


def number_arg(args: dict[str, Any], name: str, default: float | None, low: float,
               high: float) -> float:
    """``args[name]`` (else ``default``; None: required) as a number from ``low`` to
    ``high``, or BadRequest saying so. bool is not a number here; NaN, infinities and
    integers too large for a float fail the range check without overflowing."""
    value: Any = args.get(name, default)
    if type(value) not in (int, float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}")
    return float(value)
