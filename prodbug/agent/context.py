"""What a handler gets: one request with everything known about it, and the handler table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from prodbug.keys import AuthorizedKey

__all__ = ["Handler", "RequestContext", "Route"]

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
