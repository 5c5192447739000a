"""The agent's configuration: one frozen object from ``PRODBUG_*`` variables and overrides."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError

__all__ = ["DEFAULT_PORT", "AgentConfig", "parse_listen"]

DEFAULT_PORT = 7661
_TCP = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d+|\*)$")

#: Field name -> environment variable, one to one.
_ENV = {
    "listen": "PRODBUG_LISTEN",
    "server_secret_key": "PRODBUG_SERVER_SECRET_KEY",
    "authorized_keys": "PRODBUG_AUTHORIZED_KEYS",
    "allow_remote": "PRODBUG_ALLOW_REMOTE",
    "runtime_dir": "PRODBUG_RUNTIME_DIR",
    "audit_log": "PRODBUG_AUDIT_LOG",
    "max_message_size": "PRODBUG_MAX_MESSAGE_SIZE",
    "hang_dump": "PRODBUG_HANG_DUMP",
    "dump_signal": "PRODBUG_DUMP_SIGNAL",
    "session_heartbeat": "PRODBUG_SESSION_HEARTBEAT",
    "session_idle": "PRODBUG_SESSION_IDLE",
    "service": "PRODBUG_SERVICE",
}
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,100}$")


def parse_listen(listen: str) -> tuple[str, int, bool]:
    """Split ``tcp://HOST:PORT`` into host, port (0 = any free) and whether it is loopback."""
    match = _TCP.match(listen.strip())
    if match is None:
        raise ConfigError(
            f'PRODBUG_LISTEN "{listen}" is not tcp://HOST:PORT (for example '
            f"tcp://127.0.0.1:{DEFAULT_PORT}); leave it unset for local ipc only"
        )
    host, port_text = match[1], match[2]
    port = 0 if port_text == "*" else int(port_text)
    if port > 65535:
        raise ConfigError(f"PRODBUG_LISTEN port {port} is out of range (1-65535, or 0 for any)")
    bare = host.strip("[]")
    if bare == "localhost":
        loopback = True
    else:
        import ipaddress  # only with a TCP port: the local-only agent never needs it

        try:
            loopback = ipaddress.ip_address(bare).is_loopback
        except ValueError:
            loopback = False  # a hostname or "*": it may resolve to anything
    return host, port, loopback


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f'{name}="{text}" is not a boolean; use 1 or 0')


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to start. Build it with ``AgentConfig.load``."""

    listen: str | None = None
    server_secret_key: Path | None = None
    authorized_keys: Path | None = None
    allow_remote: bool = False
    runtime_dir: Path | None = None
    audit_log: Path | None = None
    max_message_size: int = 1 << 20
    hang_dump: float | None = None
    dump_signal: str = "auto"
    session_heartbeat: float = 5.0
    session_idle: float = 600.0
    #: Processes of one service share one door (its TCP port); None: the listen address,
    #: when its port is fixed (see ``service_name``).
    service: str | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AgentConfig:
        """Read ``PRODBUG_*`` from ``environ`` (default ``os.environ``); overrides win."""
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(
                f"unknown agent setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            text = env.get(var)
            if text is None or text == "":
                continue
            if name == "allow_remote":
                values[name] = _parse_bool(var, text)
            elif name == "max_message_size":
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ConfigError(f'{var}="{text}" is not a number of bytes') from None
            elif name in ("hang_dump", "session_heartbeat", "session_idle"):
                try:
                    values[name] = float(text)
                except ValueError:
                    raise ConfigError(f'{var}="{text}" is not a number of seconds') from None
            elif name in ("listen", "dump_signal", "service"):
                values[name] = text
            else:
                values[name] = Path(text).expanduser()
        paths = ("server_secret_key", "authorized_keys", "runtime_dir", "audit_log")
        for name, value in overrides.items():
            is_path = value is not None and name in paths
            values[name] = Path(value).expanduser() if is_path else value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Check what can be checked without touching the network."""
        if self.listen is not None and not isinstance(self.listen, str):
            raise ConfigError("listen must be a string such as tcp://127.0.0.1:7661, or None")
        if not isinstance(self.allow_remote, bool):
            raise ConfigError("allow_remote must be True or False")
        if not isinstance(self.max_message_size, int) or isinstance(self.max_message_size, bool):
            raise ConfigError("max_message_size must be a whole number of bytes")
        if self.max_message_size < 1024:
            raise ConfigError("max_message_size must be at least 1024 bytes")
        if self.hang_dump is not None and (
                isinstance(self.hang_dump, bool) or not isinstance(self.hang_dump, (int, float))
                or self.hang_dump < 2):
            raise ConfigError("PRODBUG_HANG_DUMP must be a number of seconds, at least 2 "
                              "(the agent re-arms its timer every SECONDS/2)")
        for name in ("session_heartbeat", "session_idle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                raise ConfigError(f"{name} must be a number of seconds, at least 1")
        if not (self.dump_signal in ("auto", "off") or str(self.dump_signal).isdigit()):
            raise ConfigError(f'PRODBUG_DUMP_SIGNAL="{self.dump_signal}" must be auto, off or '
                              f"a signal number")
        if self.service is not None and (not isinstance(self.service, str)
                                         or not _SERVICE_NAME.match(self.service)):
            raise ConfigError(f'PRODBUG_SERVICE="{self.service}" must be 1-100 letters, digits '
                              f"or _.:@/+- (for example: api, or billing-worker)")
        if self.listen is None:
            return
        _host, _port, loopback = parse_listen(self.listen)
        if not loopback and not self.allow_remote:
            raise ConfigError(
                f"refusing to listen on non-loopback {self.listen} without "
                f"PRODBUG_ALLOW_REMOTE=1; prefer 127.0.0.1 with kubectl port-forward or ssh -L"
            )
        if self.server_secret_key is None:
            raise ConfigError(
                "PRODBUG_LISTEN needs PRODBUG_SERVER_SECRET_KEY (the agent's .key_secret "
                "file): create it with: prodbug keygen --name server"
            )
        if self.authorized_keys is None:
            raise ConfigError(
                "PRODBUG_LISTEN needs PRODBUG_AUTHORIZED_KEYS (a directory of the clients' "
                ".key files); TCP never runs without an allow-list"
            )

    def service_name(self) -> str | None:
        """The service this process belongs to: ``PRODBUG_SERVICE``, else the listen
        address when its port is fixed (processes that share a port are one service), else
        none (a process of its own)."""
        if self.service:
            return self.service
        if self.listen is None:
            return None
        host, port, _ = parse_listen(self.listen)
        return f"{host}:{port}" if port else None

    def without_tcp(self) -> AgentConfig:
        """The same configuration, local ipc only (for a forked child)."""
        return replace(self, listen=None)
