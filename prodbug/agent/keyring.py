"""The agent's allow-list of client keys, reloaded when its files change."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prodbug.errors import ConfigError
from prodbug.keys import AuthorizedKey, load_authorized_keys

__all__ = ["KeyRing"]

_log = logging.getLogger("prodbug.agent")
#: Seconds between looks at the allow-list's files from requests on open connections.
RECHECK = 0.5


class KeyRing:
    """Client keys from ``PRODBUG_AUTHORIZED_KEYS``; adding a key file needs no restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = self._sign()
        self._checked_at = time.monotonic()
        self.keys: dict[str, AuthorizedKey] = load_authorized_keys(path)

    def _sign(self) -> tuple[tuple[str, int, int, int], ...]:
        """What changes when the allow-list does. Inode, size and ctime rather than mtime
        alone: a file replaced with ``cp -p``/``rsync -t``, or rewritten within one clock
        tick, is still noticed. A file that cannot be read this instant (a dangling
        link) is one entry of its own, never a reason to stop watching the others."""
        def one(path: Path) -> tuple[int, int, int]:
            try:
                st = path.stat()
            except OSError:
                return (-1, -1, -1)
            return (st.st_ino, st.st_size, st.st_ctime_ns + st.st_mtime_ns)

        entries = [(str(self.path), *one(self.path))]
        try:
            if self.path.is_dir():
                entries += [(p.name, *one(p)) for p in sorted(self.path.iterdir())
                            if p.suffix == ".key"]
        except OSError:
            entries.append(("", -1, -1, -1))  # unlistable this instant
        return tuple(entries)

    def current(self, public_key: str, now: float) -> AuthorizedKey | None:
        """``lookup`` for a request on an open connection: the files are looked at no more
        than every RECHECK seconds (each stat gives the GIL away, which costs a switch
        interval when the host is busy), so a removed key is refused within that."""
        if now - self._checked_at >= RECHECK:
            return self.lookup(public_key)
        return self.keys.get(public_key)

    def lookup(self, public_key: str) -> AuthorizedKey | None:
        """The authorized key with this Z85 public key, reloading changed files first."""
        self._checked_at = time.monotonic()
        signature = self._sign()
        if signature != self._signature:
            self._signature = signature
            try:
                self.keys = load_authorized_keys(self.path)
                _log.info("reloaded %d authorized key(s) from %s", len(self.keys), self.path)
            except ConfigError as exc:
                # A half-edited directory must not lock everyone out: keep the last good set.
                _log.warning("keeping the previous authorized keys: %s", exc)
        return self.keys.get(public_key)
