"""One exception root for everything prodbug raises, and the CLI's exit codes."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "ProdbugError",
    "ProtocolError",
    "RemoteError",
    "ReplyTimeout",
    "RequestError",
    "TargetUnreachable",
]


class ProdbugError(Exception):
    """Root of every error prodbug raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code = 1


class ConfigError(ProdbugError):
    """A setting, key file or address is wrong; the message says how to fix it."""

    exit_code = 2


class ProtocolError(ProdbugError):
    """A message is not valid prodbug protocol; ``code`` is the wire error code."""

    exit_code = 1

    def __init__(self, message: str, code: str = "bad_request", request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class TargetUnreachable(ProdbugError):
    """The agent could not be reached, or did not answer in time."""

    exit_code = 3


class ReplyTimeout(TargetUnreachable):
    """Connected, but the agent did not answer in time (a C call may hold the GIL)."""


class AuthError(ProdbugError):
    """The agent refused our key, or our role may not run the command."""

    exit_code = 4


class RemoteError(ProdbugError):
    """The agent answered with an error reply."""

    exit_code = 1

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RequestError(ProdbugError):
    """A request the agent refuses, raised by a handler: ``code`` is the wire error code
    and ``details`` go into the error reply. Anything else a handler raises is a bug of
    the agent's (``internal_error``), never blamed on the client."""

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(RequestError):
    """The request's arguments are wrong; the message says which and what is expected."""

    code = "bad_request"


class Forbidden(RequestError):
    """The key's role may not do this; ``details["needed_role"]`` names the role."""

    code = "forbidden"
