"""CURVE certificates in pyzmq's ``zmq.auth`` format: create, load, authorize.

A certificate pair is ``NAME.key`` (public, shareable) and ``NAME.key_secret``
(public and secret, mode 0600). Public certificates in the agent's
``PRODBUG_AUTHORIZED_KEYS`` may carry a ``role`` in their metadata section
(``observer`` when absent): the service owner decides, because the file that
authorizes a key lives on the service's side.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from prodbug.errors import ConfigError
from prodbug.protocol import ROLES

__all__ = [
    "AuthorizedKey",
    "Certificate",
    "check_private_permissions",
    "fingerprint",
    "load_authorized_keys",
    "load_certificate",
    "load_secret_certificate",
    "parse_certificate",
    "parse_server_key",
    "write_certificate_pair",
]

_ENTRY = re.compile(r'^\s+([\w-]+)\s*=\s*"?(.*?)"?\s*$')
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


@dataclass(frozen=True)
class Certificate:
    """One parsed certificate file: Z85 keys (text) and its metadata."""

    path: Path
    public_key: str
    secret_key: str | None
    metadata: dict[str, str]

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.path.name.split(".", 1)[0]


@dataclass(frozen=True)
class AuthorizedKey:
    """A client key the agent accepts, with the name it is audited under and its role.

    ``name`` is the file name in the agent's allow-list (the service owner's choice, not
    the certificate's metadata, which the client wrote); ``id`` is the key's fingerprint,
    which is what sessions belong to.
    """

    public_key: str
    name: str
    role: str

    @property
    def id(self) -> str:
        return fingerprint(self.public_key)


def fingerprint(public_key: str) -> str:
    """A short, stable label for a Z85 public key, for logs and messages (16 hex digits of
    its SHA-256: unique in practice, and shows nothing of the key itself)."""
    import hashlib  # with the first key seen, not with every ``import prodbug.keys``

    return hashlib.sha256(public_key.encode("ascii", "replace")).hexdigest()[:16]


def check_private_permissions(path: Path) -> None:
    """Refuse a secret key file that anyone but its owner can read or write, as ssh does."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"secret key {path} is accessible by others (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )


def load_certificate(path: Path) -> Certificate:
    """Parse a ``zmq.auth`` certificate file (public or secret)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"key file {path} does not exist; create a pair with: prodbug keygen"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    return parse_certificate(text, path)


def parse_certificate(text: str, path: Path) -> Certificate:
    """Parse the text of a ``zmq.auth`` certificate (``path`` names it in messages)."""
    section = ""
    metadata: dict[str, str] = {}
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        match = _ENTRY.match(line)
        if match is None:
            continue
        if section == "metadata":
            metadata[match[1]] = match[2]
        elif section == "curve":
            keys[match[1]] = match[2]
    public = keys.get("public-key", "")
    if not _Z85_KEY.match(public):
        raise ConfigError(
            f"{path} is not a CURVE certificate (no 40-character public-key in a "
            f"'curve' section); create one with: prodbug keygen"
        )
    secret = keys.get("secret-key")
    if secret is not None and not _Z85_KEY.match(secret):
        raise ConfigError(f"{path} has a malformed secret-key; make a new pair: prodbug keygen")
    return Certificate(path=path, public_key=public, secret_key=secret, metadata=metadata)


def load_secret_certificate(path: Path) -> Certificate:
    """Load a secret certificate, refusing loose permissions and public-only files."""
    if not path.exists():
        raise ConfigError(f"secret key file {path} does not exist; create one with: prodbug keygen")
    check_private_permissions(path)
    cert = load_certificate(path)
    if cert.secret_key is None:
        raise ConfigError(
            f"{path} holds only a public key; point at the .key_secret file of the pair"
        )
    return cert


def load_authorized_keys(path: Path) -> dict[str, AuthorizedKey]:
    """Load the client keys the agent accepts: a certificate file or a directory of ``*.key``.

    Returns a map from Z85 public key to its ``AuthorizedKey``.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".key" and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            f"authorized keys {path} does not exist; make it a directory holding the "
            f"clients' .key files (from prodbug keygen)"
        )
    keys: dict[str, AuthorizedKey] = {}
    for file in files:
        cert = load_certificate(file)
        role = cert.metadata.get("role", "observer")
        if role not in ROLES:
            raise ConfigError(
                f'{file}: role "{role}" is not one of {", ".join(ROLES)}; fix its metadata'
            )
        keys[cert.public_key] = AuthorizedKey(cert.public_key, file.name.split(".", 1)[0], role)
    return keys


def parse_server_key(value: str) -> str:
    """The agent's public key, given as Z85 text or as a path to its certificate."""
    value = value.strip()
    if _Z85_KEY.match(value) and not os.path.exists(value):
        return value
    return load_certificate(Path(value).expanduser()).public_key


def _render(kind: str, metadata: dict[str, str], public: str, secret: str | None) -> str:
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"#   ****  Generated on {now} by prodbug keygen  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
    ]
    if secret is not None:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata"]
    lines += [f'    {k} = "{v}"' for k, v in metadata.items()]
    lines += ["curve", f'    public-key = "{public}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def write_certificate_pair(
    directory: Path, name: str, role: str = "observer", *, force: bool = False
) -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory``."""
    import zmq  # only keygen needs libzmq's key generator

    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ConfigError(f'key name "{name}" must be letters, digits, ".", "_" or "-"')
    if role not in ROLES:
        raise ConfigError(f'role "{role}" is not one of {", ".join(ROLES)}')
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path = directory / f"{name}.key"
    secret_path = directory / f"{name}.key_secret"
    if not force:
        for existing in (public_path, secret_path):
            if existing.exists():
                raise ConfigError(f"{existing} already exists; pass --force to replace it")
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    metadata = {"name": name, "role": role}
    public_path.write_text(_render("**Public**", metadata, public, None), encoding="utf-8")
    secret_path.unlink(missing_ok=True)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_render("**Secret**", metadata, public, secret))
    return public_path, secret_path
