"""Named targets: ``~/.config/prodbug/config.toml`` (or ``$PRODBUG_CONFIG``), and the agent
keys they pin.

A named target is an address (any TARGET), the agent's public key, the client key to use
and a default timeout, under a short name (``prodbug stacks api-prod``); ``[groups]`` name
lists of targets for fleet commands. The first time a name is used, the fingerprint of
its agent key is written to ``known_agents`` beside the config; afterwards a different
configured key is refused until the operator accepts it (``prodbug targets --accept
NAME``). CURVE has the client supply the server's key, so the pin guards the operator's
own configuration (a key file or setting swapped under them), not the network.

``prodbug targets`` (``configure_parser``/``main``) lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prodbug.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "SETTINGS",
    "NamedConfig",
    "NamedTarget",
    "accept",
    "config_path",
    "configure_parser",
    "default_timeout",
    "load_config",
    "lookup",
    "main",
    "might_be_name",
    "near_names",
    "pinned_key",
    "resolve_group",
]

CONFIG_ENV = "PRODBUG_CONFIG"
DEFAULT_CONFIG = Path("~/.config/prodbug/config.toml")
PINS_FILE = "known_agents"

#: Everything a ``[targets.NAME]`` table may hold (anything else is refused: a typo must
#: not silently fall back to a default key).
SETTINGS = {
    "address": "where the agent is: any TARGET (HOST:PORT, tcp://, ipc://, ssh://, kube://)",
    "server_key": "the agent's public key: its .key file or the Z85 text (pinned)",
    "client_key": "your secret certificate (.key_secret) for this target",
    "timeout": "seconds to wait for the agent unless --timeout says otherwise",
}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A Z85-encoded CURVE key (ZeroMQ RFC 32): 40 characters of this alphabet.
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_PIN_LOCK = threading.Lock()  # fleet commands connect from several threads


@dataclass(frozen=True)
class NamedTarget:
    """One ``[targets.NAME]`` table, its paths made absolute (relative ones are relative to
    the config file's folder)."""

    name: str
    address: str
    config: Path
    #: An absolute path to the agent's ``.key`` file, or its Z85 text.
    server_key: str | None = None
    client_key: str | None = None
    timeout: float | None = None

    @property
    def pins(self) -> Path:
        """The file this target's agent key is pinned in."""
        return self.config.parent / PINS_FILE

    def agent_key(self) -> str | None:
        """The configured agent public key (Z85), read now; None when none is configured."""
        if self.server_key is None:
            return None
        if _Z85_KEY.match(self.server_key):
            return self.server_key
        from prodbug.keys import parse_certificate

        try:
            path = Path(self.server_key)
            text = _read_private(path)  # a key others could swap: refused
            if text is None:
                raise ConfigError(f"{self.server_key} does not exist")
            return parse_certificate(text, path).public_key  # the text checked, no re-read
        except ConfigError as exc:
            raise ConfigError(f'target "{self.name}" in {self.config}: server_key: {exc}') \
                from None


@dataclass(frozen=True)
class NamedConfig:
    """The whole config file; empty when the default file does not exist."""

    path: Path
    targets: dict[str, NamedTarget] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    exists: bool = False


def config_path() -> Path:
    """``$PRODBUG_CONFIG``, else ``~/.config/prodbug/config.toml``."""
    value = os.environ.get(CONFIG_ENV)
    return Path(value).expanduser() if value else DEFAULT_CONFIG.expanduser()


def might_be_name(text: str) -> bool:
    """Whether ``text`` has the shape of a target name (a bare word: no port, no scheme).

    Only such words are looked up: ``HOST:PORT`` and ``SCHEME://`` never read the config.
    """
    return bool(_NAME.match(text)) and not text.isdigit()


def _check_safe(path: Path, st: os.stat_result) -> None:
    """Refuse a file someone else could have written, as ssh does with ~/.ssh/config:
    whoever can edit it chooses which keys and pins this command trusts."""
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to you: prodbug will not "
                          f"trust keys it names; fix it with: chown {os.getuid()} {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ConfigError(f"{path} is writable by others (mode {mode:04o}): prodbug will not "
                          f"trust keys it names; fix it with: chmod go-w {path}")


def _check_folder(path: Path) -> None:
    """The folder must be safe too: in one others may write, the file can be swapped or
    removed (a removed ``known_agents`` would pin an attacker's key afresh)."""
    folder = path.parent
    try:
        st = os.stat(folder)
    except OSError:
        return  # the file's own open will say what is wrong
    mode = stat.S_IMODE(st.st_mode)
    sticky_ok = mode & stat.S_ISVTX and st.st_uid in (os.getuid(), 0) and \
        path.exists() and path.stat().st_uid == os.getuid()
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{folder} belongs to uid {st.st_uid}, not to you: prodbug will not "
                          f"trust {path.name} there; keep it in a folder of your own")
    if mode & 0o022 and not sticky_ok:
        raise ConfigError(f"{folder} is writable by others (mode {mode:04o}): prodbug will "
                          f"not trust {path.name} there; fix it with: chmod go-w {folder}")


def _read_private(path: Path) -> str | None:
    """The file's text after the ownership checks (its own and its folder's), or None when
    it does not exist."""
    _check_folder(path)
    try:
        # No FIFO waited on: a regular file (a dotfiles symlink is fine: what is checked
        # below is the file it leads to, opened once and read from the same descriptor).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path} is not a regular file")
            _check_safe(path, st)
            data = f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def _resolve_path(value: str, base: Path) -> str:
    return str((base / Path(value).expanduser()).absolute())


def _parse_target(path: Path, name: str, table: object) -> NamedTarget:
    where = f'{path}: target "{name}"'
    if not might_be_name(name):
        raise ConfigError(f"{where}: a name is letters, digits, '_', '.' or '-' (not only "
                          f"digits, no ':' or '/'), so it cannot be mistaken for a TARGET")
    if not isinstance(table, dict):
        raise ConfigError(f'{where} must be a table: [targets.{name}] with address = "..."')
    for key, value in table.items():
        if key not in SETTINGS:
            import difflib

            hint = difflib.get_close_matches(key, SETTINGS, n=1)
            extra = f' (did you mean "{hint[0]}"?)' if hint else ""
            if isinstance(value, dict):
                extra = f' (a name with a dot is quoted: [targets."{name}.{key}"])'
            raise ConfigError(f'{where}: unknown setting "{key}"{extra}; known: '
                              f'{", ".join(SETTINGS)}')
    address = table.get("address")
    if not isinstance(address, str) or not address:
        raise ConfigError(f'{where} has no address (address = "HOST:PORT", "ssh://HOST", ...)')
    from prodbug.target import resolve_target

    try:
        resolve_target(address)
    except ConfigError as exc:
        raise ConfigError(f"{where}: address: {exc}") from None
    base = path.parent
    values: dict[str, Any] = {}
    for key in ("server_key", "client_key"):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a path (or, for server_key, Z85 text)")
        value = value.strip()
        is_text = key == "server_key" and _Z85_KEY.match(value) \
            and not Path(_resolve_path(value, base)).exists()
        values[key] = value if is_text else _resolve_path(value, base)
    timeout = table.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout < math.inf:
            raise ConfigError(f"{where}: timeout must be a positive number of seconds")
        values["timeout"] = float(timeout)
    return NamedTarget(name, address, path, **values)


def _parse_groups(path: Path, table: object, targets: dict[str, NamedTarget]
                  ) -> dict[str, list[str]]:
    from prodbug.target import resolve_target

    if not isinstance(table, dict):
        raise ConfigError(f'{path}: [groups] must be a table: NAME = ["target", ...]')
    groups: dict[str, list[str]] = {}
    for name, members in table.items():
        where = f'{path}: group "{name}"'
        if not might_be_name(name):
            raise ConfigError(f"{where}: a name is letters, digits, '_', '.' or '-'")
        if name in targets:
            raise ConfigError(f'{where}: "{name}" is a target too; give them different names')
        if not isinstance(members, list) or not members or \
                not all(isinstance(m, str) and m for m in members):
            raise ConfigError(f'{where} must be a non-empty list of target names or '
                              f'addresses: {name} = ["api-prod", "10.0.0.7:7661"]')
        for member in members:
            if member in table:
                raise ConfigError(f'{where}: "{member}" is a group; groups do not nest')
            if member not in targets:
                try:
                    resolve_target(member)
                except ConfigError as exc:
                    raise ConfigError(f'{where}: "{member}" is not a configured target, '
                                      f"and {exc}") from None
        groups[name] = list(dict.fromkeys(members))
    return groups


def load_config(path: Path | None = None) -> NamedConfig:
    """Read and check the config file (``config_path()`` by default).

    A missing default file is an empty config; a missing ``$PRODBUG_CONFIG`` file, bad
    TOML, an unknown section or setting, or a file others may write is a ``ConfigError``.
    """
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    path = path if path is not None else config_path()
    text = _read_private(path)
    if text is None:
        if explicit:
            raise ConfigError(f"config file {path} does not exist (check {CONFIG_ENV})")
        return NamedConfig(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # 3.10: the same parser, from PyPI (a dependency there only)
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in ("targets", "groups"):
            raise ConfigError(f"{path}: unknown section [{key}]; known: [targets.NAME], "
                              f"[groups] (docs/targets.md)")
    raw_targets = data.get("targets", {})
    if not isinstance(raw_targets, dict):
        raise ConfigError(f'{path}: targets must be tables: [targets.NAME] with address = "..."')
    targets = {name: _parse_target(path, name, table) for name, table in raw_targets.items()}
    groups = _parse_groups(path, data.get("groups", {}), targets)
    return NamedConfig(path, targets, groups, exists=True)


def lookup(name: str) -> NamedTarget | None:
    """The configured target called ``name``, or None (also for a group's name)."""
    if not might_be_name(name):
        return None
    return load_config().targets.get(name)


def resolve_group(name: str) -> list[str] | None:
    """The members of group ``name`` as written (target names or addresses), or None."""
    if not might_be_name(name):
        return None
    return load_config().groups.get(name)


def near_names(name: str, config: NamedConfig | None = None) -> list[str]:
    """Configured target and group names close to ``name`` (for "did you mean")."""
    config = config if config is not None else load_config()
    import difflib

    return difflib.get_close_matches(name, [*config.targets, *config.groups], n=2, cutoff=0.75)


def default_timeout(targets: str | Sequence[str] | None, fallback: float = 5.0) -> float:
    """The timeout when ``--timeout`` is not given: a named target's ``timeout``, else
    ``fallback``; for several TARGETs (or a group), the longest of theirs."""
    texts = [targets] if isinstance(targets, str) else list(targets or [])
    if not any(might_be_name(t) for t in texts):
        return fallback
    config = load_config()
    expanded = [m for t in texts for m in config.groups.get(t, [t])]
    found = [config.targets.get(t) for t in expanded]
    return max((t.timeout if t is not None and t.timeout is not None else fallback
                for t in found), default=fallback)


# -- pins ---------------------------------------------------------------------------------

def _read_pins(pins: Path) -> dict[str, str]:
    text = _read_private(pins)
    if text is None:
        return {}
    from prodbug.keys import fingerprint

    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not _Z85_KEY.match(parts[2]) or fingerprint(parts[2]) != parts[1]:
            raise ConfigError(f"{pins} line {number} is damaged (expected NAME FINGERPRINT "
                              f"KEY); delete that line and accept the key again with: "
                              f"prodbug targets --accept NAME")
        result[parts[0]] = parts[2]
    return result


def _write_pins(pins: Path, entries: dict[str, str]) -> None:
    from prodbug.keys import fingerprint

    lines = ["# Agent keys prodbug has pinned for named targets: NAME FINGERPRINT KEY.",
             "# Change one only with: prodbug targets --accept NAME"]
    lines += [f"{name} {fingerprint(key)} {key}" for name, key in sorted(entries.items())]
    try:
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{PINS_FILE}.", dir=pins.parent)  # mode 0600
    except OSError as exc:
        raise ConfigError(f"cannot write {pins} (where agent keys are pinned): "
                          f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pins)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialize read-modify-write of the pins between threads and processes."""
    import fcntl

    with _PIN_LOCK:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError as exc:
            raise ConfigError(f"cannot open {folder}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def pinned_key(target: NamedTarget) -> str | None:
    """The agent key pinned for ``target``, or None when it was never used."""
    return _read_pins(target.pins).get(target.name)


def check_pin(target: NamedTarget, public_key: str) -> None:
    """Pin ``public_key`` for ``target`` on first use; refuse a key that differs from the
    pinned one, naming both fingerprints and how to accept the new one."""
    from prodbug.keys import fingerprint

    with _locked(target.pins.parent):
        pins = _read_pins(target.pins)
        old = pins.get(target.name)
        if old is None:
            pins[target.name] = public_key
            _write_pins(target.pins, pins)
            return
    if old != public_key:
        raise ConfigError(
            f'target "{target.name}": its agent key changed: pinned {fingerprint(old)}, '
            f"configured now {fingerprint(public_key)} (server_key in {target.config}); if "
            f"the service's owner confirms the new key, accept it with: prodbug targets "
            f"--accept {target.name}")


def accept(name: str, config: NamedConfig | None = None) -> tuple[str | None, str]:
    """Pin the currently configured agent key of target ``name``; returns the previously
    pinned key (None if none) and the new one."""
    config = config if config is not None else load_config()
    target = config.targets.get(name)
    if target is None:
        raise ConfigError(_unknown(name, config))
    key = target.agent_key()
    if key is None:
        raise ConfigError(f'target "{name}" has no server_key in {config.path}: nothing to pin')
    with _locked(target.pins.parent):
        pins = _read_pins(target.pins)
        old = pins.get(name)
        pins[name] = key
        _write_pins(target.pins, pins)
    return old, key


def _unknown(name: str, config: NamedConfig) -> str:
    if name in config.groups:
        return f'"{name}" is a group in {config.path}, not a target'
    known = ", ".join(config.targets) or "none"
    return f'no target "{name}" in {config.path} (configured: {known})'


# -- prodbug targets ------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``targets``' options to its sub-parser."""
    parser.add_argument("--accept", metavar="NAME",
                        help="pin NAME's configured agent key in place of the pinned one "
                             "(after the service's owner confirmed the new key)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _describe(target: NamedTarget, config: NamedConfig, pins: dict[str, str]) -> dict[str, Any]:
    from prodbug.keys import fingerprint, load_secret_certificate

    entry: dict[str, Any] = {
        "name": target.name, "address": target.address, "timeout": target.timeout,
        "server_key": target.server_key, "server_key_fingerprint": None,
        "client_key": target.client_key, "client_key_fingerprint": None,
        "pin": None, "pinned_fingerprint": None,
        "groups": [g for g, members in config.groups.items() if target.name in members],
        "errors": [],
    }
    pinned = pins.get(target.name)
    if pinned is not None:
        entry["pinned_fingerprint"] = fingerprint(pinned)
    try:
        key = target.agent_key()
    except ConfigError as exc:
        entry["errors"].append(str(exc))
        key = None
    if key is not None:
        entry["server_key_fingerprint"] = fingerprint(key)
        entry["pin"] = "new" if pinned is None else "pinned" if pinned == key else "changed"
    if target.client_key is not None:
        try:
            cert = load_secret_certificate(Path(target.client_key))
            entry["client_key_fingerprint"] = fingerprint(cert.public_key)
        except ConfigError as exc:
            entry["errors"].append(f"client_key: {exc}")
    return entry


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def main(args: argparse.Namespace) -> int:
    """List the named targets, or (``--accept NAME``) re-pin one; returns an exit code."""
    from prodbug.keys import fingerprint
    from prodbug.textsafe import printable

    config = load_config()
    if args.accept:
        old, key = accept(args.accept, config)
        if args.json:
            print(json.dumps({"name": args.accept, "fingerprint": fingerprint(key),
                              "previous": fingerprint(old) if old else None}, indent=2))
        elif old is None:
            print(f"{args.accept}: pinned agent key {fingerprint(key)} (not pinned before)")
        elif old == key:
            print(f"{args.accept}: agent key {fingerprint(key)} was already pinned")
        else:
            print(f"{args.accept}: pinned agent key {fingerprint(key)} (replaces "
                  f"{fingerprint(old)})")
        return 0
    pins = _read_pins(config.path.parent / PINS_FILE) if config.exists else {}
    entries = [_describe(t, config, pins) for t in config.targets.values()]
    if args.json:
        print(json.dumps({"config": str(config.path), "exists": config.exists,
                          "targets": entries, "groups": config.groups}, indent=2))
        return 0
    if not config.exists:
        print(f"no named targets: {config.path} does not exist (docs/targets.md shows its "
              f"format)")
        return 0
    print(f"config: {config.path}")
    if not entries:
        print("no targets")
    else:
        rows = [["NAME", "ADDRESS", "AGENT KEY", "PIN", "CLIENT KEY", "GROUPS"]]
        for e in entries:
            pin = {"new": "not yet", "pinned": "pinned", None: "-"}.get(e["pin"]) or \
                f"CHANGED (pinned {e['pinned_fingerprint']})"
            client = e["client_key_fingerprint"] or ("(default)" if e["client_key"] is None
                                                     else "?")
            rows.append([e["name"], e["address"], e["server_key_fingerprint"] or "-", pin,
                         client, ",".join(e["groups"]) or "-"])
        sys.stdout.write(printable(_table(rows), multiline=True))
    for e in entries:
        for error in e["errors"]:
            print(f"  {e['name']}: {printable(error)}")
    if config.groups:
        print("groups:")
        for name, members in config.groups.items():
            print(f"  {name}: {', '.join(members)}")
    return 0
