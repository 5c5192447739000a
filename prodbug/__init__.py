"""prodbug: debug live Python services in production over one guarded ZeroMQ port.

In the service: ``prodbug.start_agent()`` (or ``import prodbug.autostart``).
On the operator's side: the ``prodbug`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prodbug._version import __version__
from prodbug.errors import (
    AuthError,
    ConfigError,
    ProdbugError,
    ProtocolError,
    RemoteError,
    TargetUnreachable,
)

if TYPE_CHECKING:
    from prodbug.agent import Agent

__all__ = [
    "Agent",
    "AuthError",
    "ConfigError",
    "ProdbugError",
    "ProtocolError",
    "RemoteError",
    "TargetUnreachable",
    "__version__",
    "start_agent",
]



def start_agent(**overrides: Any) -> Agent:
    """Start this process's agent (see ``prodbug.agent.start_agent``)."""
    from prodbug.agent import start_agent as _start

    return _start(**overrides)


def __getattr__(name: str) -> Any:
    # Lazy, so that the CLI's ``import prodbug`` does not pay for zmq and psutil.
    if name == "Agent":
        from prodbug.agent import Agent

        return Agent
    raise AttributeError(f"module 'prodbug' has no attribute {name!r}")
