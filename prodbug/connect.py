"""One way in for every command: resolve the TARGET, open what carries it, load keys, connect.

``connect()`` is the only place that turns what the operator typed into a ``Client``: a
local pid, ``HOST:PORT``, ``tcp://``, ``ipc://``, a name from the config file
(``prodbug.named``: a configured name wins over a host of that name), and the schemes that
need a carrier of their own (``ssh://``, ``kube://``: a tunnel that lives exactly as long
as the connection). A new way in is one entry in ``CARRIERS``; pdb and VS Code sessions,
``--all`` and every other command get it with no change of theirs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prodbug.errors import ConfigError
from prodbug.target import Target, resolve_target

if TYPE_CHECKING:
    from prodbug.client import Client, Credentials

__all__ = ["CARRIERS", "DEFAULT_KEY_DIR", "DEFAULT_TIMEOUT", "Carrier", "Connection",
           "KeyChoice", "connect", "load_credentials"]

DEFAULT_KEY_DIR = Path("~/.config/prodbug")
DEFAULT_TIMEOUT = 5.0


class Carrier(Protocol):
    """An open way to the agent (a tunnel): the endpoint to connect to, closed on exit.

    ``relay_pid``: the pid every request must name (the door behind the carrier relays it
    to that process), or None when the endpoint is the process itself (an ipc socket
    forwarded by ssh) or no pid was asked for.
    """

    endpoint: str
    label: str
    relay_pid: int | None
    #: The far end is an agent's CURVE port, whatever the local end (ssh forwards a local
    #: Unix socket to it): the keys are needed.
    curve: bool

    def close(self) -> None: ...


#: scheme -> opener: ``open(target, timeout) -> Carrier``. Filled by the modules that
#: implement a scheme, imported lazily (a plain ``HOST:PORT`` pays for none of them).
CARRIERS: dict[str, Callable[[Target, float], Carrier]] = {}
_CARRIER_MODULES = {"ssh": "prodbug.transport.ssh", "kube": "prodbug.transport.kube"}


@dataclass(frozen=True)
class KeyChoice:
    """Which keys a TCP connection uses: paths or Z85 text; None means the default."""

    client_key: str | None = None
    server_key: str | None = None


def load_credentials(keys: KeyChoice) -> Credentials:
    """The operator's secret certificate and the agent's public key, or a ConfigError that
    says where each is looked for."""
    from prodbug.client import Credentials
    from prodbug.keys import load_secret_certificate, parse_server_key

    key_path = keys.client_key or os.environ.get("PRODBUG_CLIENT_SECRET_KEY")
    path = Path(key_path).expanduser() if key_path else \
        (DEFAULT_KEY_DIR / "client.key_secret").expanduser()
    if not key_path and not path.exists():
        raise ConfigError("TCP targets need your secret key: set PRODBUG_CLIENT_SECRET_KEY or "
                          "--key, or create ~/.config/prodbug/client.key_secret with: "
                          "prodbug keygen")
    server = keys.server_key or os.environ.get("PRODBUG_SERVER_KEY")
    if not server:
        raise ConfigError("TCP targets need the agent's public key: set PRODBUG_SERVER_KEY or "
                          "--server-key (the agent's server.key file or its Z85 text)")
    return Credentials(load_secret_certificate(path), parse_server_key(server))


@dataclass
class Connection:
    """A client to one agent, and whatever carries it (closed together)."""

    client: Client
    target: Target
    label: str
    carrier: Carrier | None = None
    notes: list[str] = field(default_factory=list)
    #: The timeout in force (the caller's, else the named target's, else 5 s).
    timeout: float = 5.0


def _carrier(target: Target, timeout: float) -> Carrier | None:
    if target.scheme is None:
        return None
    opener = CARRIERS.get(target.scheme)
    if opener is None and target.scheme in _CARRIER_MODULES:
        import importlib

        importlib.import_module(_CARRIER_MODULES[target.scheme])  # registers itself
        opener = CARRIERS.get(target.scheme)
    if opener is None:
        raise ConfigError(f"{target.scheme}:// targets are not supported by this prodbug")
    return opener(target, timeout)


def _named(text: str | None, keys: KeyChoice) -> tuple[str | None, KeyChoice, float | None]:
    """A configured name wins over a host of that name: its address, keys (the agent's
    pinned) and timeout; explicit ``keys`` still win over the config's."""
    if not text or "://" in text or ":" in text or text.isdigit():
        return text, keys, None
    from prodbug import named

    if not named.might_be_name(text):
        try:
            resolve_target(text)
        except ConfigError as exc:  # e.g. "api prod": say names were considered too
            raise ConfigError(f"{exc}, nor a named target in {named.config_path()} "
                              f"(prodbug targets lists them)") from None
        return text, keys, None
    config = named.load_config()
    entry = config.targets.get(text)
    if entry is None:
        if text in config.groups:
            raise ConfigError(f'"{text}" is a group of targets in {config.path}: name one '
                              f"of them (prodbug targets lists them)")
        near = named.near_names(text, config)
        if near:  # most likely a typo of a name, rather than a host of this name
            print(f'prodbug: "{text}" is not a named target (did you mean '
                  f'{" or ".join(near)}?); treating it as a host', file=sys.stderr)
        return text, keys, None
    server = keys.server_key
    if server is None:
        server = entry.agent_key()
        if server is not None:
            named.check_pin(entry, server)
    return entry.address, KeyChoice(keys.client_key or entry.client_key, server), entry.timeout


@contextlib.contextmanager
def connect(text: str | None, pid: int | None = None, *, timeout: float | None = None,
            keys: KeyChoice | None = None, routing_id: bytes | None = None,
            relay: bool = True) -> Iterator[Connection]:
    """Connect to the agent that ``text`` (a TARGET or a named target) and ``pid`` name;
    everything opened on the way is closed when the block ends, on every exit path.

    A named target (``prodbug.named``) brings its address, keys and timeout; ``timeout``
    None means its timeout, else 5 s. ``relay=False`` ignores ``pid`` for routing (the
    caller addresses each request itself).
    """
    from prodbug.client import Client

    address, keys, named_timeout = _named(text, keys or KeyChoice())
    if timeout is None:
        timeout = named_timeout if named_timeout is not None else DEFAULT_TIMEOUT
    if timeout <= 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    target = resolve_target(address, pid)
    # Keys first where TCP is certain (kube:// always forwards a TCP port): a missing key
    # must not start a kubectl for nothing.
    early = load_credentials(keys) if target.is_tcp or target.scheme == "kube" else None
    with contextlib.ExitStack() as stack:
        carrier = _carrier(target, timeout)
        if carrier is not None:
            stack.callback(carrier.close)
        endpoint = carrier.endpoint if carrier is not None else target.endpoint
        curve = endpoint.startswith("tcp://") or (carrier is not None and carrier.curve)
        credentials = (early or load_credentials(keys)) if curve else None
        pid_to_name = carrier.relay_pid if carrier is not None else target.request_pid
        client = stack.enter_context(Client(
            endpoint, credentials, timeout=timeout, routing_id=routing_id,
            pid=pid_to_name if relay else None))
        label = carrier.label if carrier is not None else target.label
        yield Connection(client, target, label, carrier, timeout=timeout)
