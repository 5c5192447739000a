"""What looks like a secret, by name and by value, and masking it inside text.

By name: a variable, attribute, dict key or header name such as ``password``, ``pw``,
``creds``, ``X-Api-Key`` (names are compared lower-case with ``-`` read as ``_``) hides its
whole value. Connection-string names (``dsn``, ``database_url``, ``*_url``) show their
value with every credential in it masked.

By value, whatever the name: URL userinfo passwords (``postgres://u:<redacted>@h/db``),
``Bearer``/``Basic``/``Token`` credentials, PEM private-key blocks, well-known token
shapes (Stripe, GitHub, Slack, AWS access key ids, JWTs) and ``key=value`` /
``"key": "value"`` pairs with a secret-looking key (query strings, JSON, libpq DSNs,
header lines). The text given is already cut to a bounded window; every pattern is linear
or bounded on it.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "is_secret_name", "is_url_name", "mask_text", "normalize_name"]

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|private_?key|access_?key|auth|cookie|"
    r"credential|session_?id|signature|jwt|bearer|^key$|_key$|"
    r"(^|_)(pw|pwd|creds?|salt|otp)($|_)")
#: Names of connection strings: shown, with any credential inside them masked.
_URL_NAME = re.compile(r"(^|_)(dsn|url|uri)$")

_PEM = re.compile(r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)"
                  r"[\s\S]*?(?:(-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)|\Z)")
_USERINFO = re.compile(
    r"(?i)(?<![\w+.-])([a-z][a-z0-9+.-]{0,30}://)(?:([^\s/?#@:]*):([^\s/?#]*)|([^\s/?#@:]+))@")
_SCHEMES = re.compile(r"\b((?i:bearer))\s+[^\s\"',;]+|\b(Basic|Token)\s+[A-Za-z0-9+/=._~-]{4,}")
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"((?:sk|rk)_(?:live|test)_)[0-9A-Za-z]{4,}"
    r"|(gh[pousr]_)[A-Za-z0-9]{8,}"
    r"|(github_pat_)[A-Za-z0-9_]{8,}"
    r"|(xox[abpres]-)[A-Za-z0-9-]{4,}"
    r"|(AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"
    r"|()eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2})")
_TOKEN_HINTS = ("k_live_", "k_test_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox",
                "AKIA", "ASIA", "eyJ")
#: ``key=value``, ``key: value``, ``"key": "value"``, ``'key': 'value'``: the key and separator;
#: the value is read after it only when the key looks secret.
_KEY = re.compile(r"""(["']?)([A-Za-z_][\w.\-]{0,63})\1(\s*[:=]\s*)""")
_VALUE = re.compile(r"""("(?:[^"\\]|\\.)*(?:"|\Z)|'(?:[^'\\]|\\.)*(?:'|\Z)"""
                    r"""|[^\s"',;&}\]][^"',;&}\]\r\n]*)""")
#: A URL whose userinfo the cut left unfinished (no ``@`` yet): mask the rest.
_OPEN_USERINFO = re.compile(r"(?i)(://[^\s/?#@:]*:)[^\s/?#@]*\Z")


def normalize_name(name: str) -> str:
    """Lower case, ``-`` and spaces as ``_``: ``X-Api-Key`` and ``x_api_key`` are one name."""
    return name.lower().replace("-", "_").replace(" ", "_")


def is_secret_name(name: str) -> bool:
    """Whether a variable, attribute, key or header name looks like it holds a secret."""
    return bool(_SECRET_NAME.search(normalize_name(name)))


def is_url_name(name: str) -> bool:
    """Whether a name holds a connection string (shown with its credentials masked)."""
    return bool(_URL_NAME.search(normalize_name(name)))


def _userinfo(match: re.Match[str], strict: bool) -> str:
    scheme, user, password, alone = match.groups()
    if password is not None:
        return f"{scheme}{user}:{REDACTED}@"
    # A user with no password is mostly a user name ("git@"); in a connection string it
    # may be the credential itself (a Sentry DSN's key).
    return f"{scheme}{REDACTED}@" if strict else f"{scheme}{alone}@"


def _scheme(match: re.Match[str]) -> str:
    return f"{match[1] or match[2]} {REDACTED}"


def _token(match: re.Match[str]) -> str:
    prefix = next((g for g in match.groups() if g is not None), "")
    return prefix + REDACTED


def _pem(match: re.Match[str]) -> str:
    return match[1] + REDACTED + (match[2] or "")


def _masked_value(value: str, sep: str) -> tuple[str, int]:
    """The masked value and how much of ``value`` it replaces."""
    if value[0] in "\"'":
        closed = len(value) > 1 and value[-1] == value[0] and value[-2:] != "\\" + value[0]
        return value[0] + REDACTED + (value[0] if closed else ""), len(value)
    if "=" in sep:  # ``password=x user=bob``: the value ends at white space
        return REDACTED, len(value.split(None, 1)[0])
    return REDACTED, len(value)  # a header line's value runs to the end of the line


def _mask_pairs(text: str) -> str:
    out: list[str] = []
    pos = 0
    seen: dict[str, bool] = {}  # text like "a:a:a:..." repeats its keys
    for key in _KEY.finditer(text):
        if key.start() < pos:
            continue
        secret = seen.get(key[2])
        if secret is None:
            secret = seen[key[2]] = is_secret_name(key[2])
        if not secret:
            continue
        value = _VALUE.match(text, key.end())
        if value is None:
            continue
        shown, used = _masked_value(value[0], key[3])
        out += (text[pos:key.end()], shown)
        pos = key.end() + used
    return "".join(out) + text[pos:] if out else text


def mask_text(text: str, *, strict: bool = False, cut: bool = False) -> str:
    """``text`` with every secret-shaped part replaced by ``<redacted>``.

    ``strict`` (connection strings): a URL user with no password and a bare value with no
    structure at all are masked too. ``cut``: ``text`` is the start of a longer string, so
    a credential may run past its end.
    """
    if strict and "://" not in text and "=" not in text:
        return REDACTED
    if "PRIVATE KEY" in text:
        text = _PEM.sub(_pem, text)
    if "://" in text:
        text = _USERINFO.sub(lambda m: _userinfo(m, strict), text)
        if cut:
            text = _OPEN_USERINFO.sub(lambda m: m[1] + REDACTED, text)
    # Plain substring tests first: far cheaper than running a pattern over every position.
    if "earer" in text or "EARER" in text or "Basic" in text or "Token" in text:
        text = _SCHEMES.sub(_scheme, text)
    if any(hint in text for hint in _TOKEN_HINTS):
        text = _TOKENS.sub(_token, text)
    if ":" in text or "=" in text:
        text = _mask_pairs(text)
    return text
