"""Text from a service made safe for a terminal: control characters shown, never obeyed.

Everything the CLI prints that came from a process (thread names, file names, source
lines, locals, argv, error messages, pdb's output) may hold escape sequences: ``ESC [2J``
clears the operator's screen, ``ESC ]0;...BEL`` retitles it, OSC 52 writes their
clipboard, a BiDi override makes ``evil.py`` read as ``yp.live``. Each such character is
replaced by a visible escape (``\\x1b``, ``\\u202e``), the way ``repr`` shows it, so the
operator sees that something odd was there without their terminal acting on it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["printable", "printable_tree"]

# C0 controls but \t and \n (handled per call), DEL, C1 controls (U+009B is a one-byte CSI
# on terminals that honour 8-bit controls), the BiDi embeddings, overrides, isolates and
# marks ("Trojan Source"), the line and paragraph separators, and lone surrogates (which
# JSON may carry and which cannot even be encoded to stdout).
_UNSAFE = ("\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
           "\ud800-\udfff")
_ONE_LINE = re.compile(f"[\t\n{_UNSAFE}]")
_MULTI_LINE = re.compile(f"[{_UNSAFE}]")
# How json.dumps(ensure_ascii=False) writes the C0 controls; the rest it leaves as they are.
_JSON_C0 = re.compile(r"\\(?:u00[01]|[bfnrt])")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any, *, multiline: bool = False) -> str:
    """``text`` (``str()`` of it) with every terminal-dangerous character escaped.

    ``multiline`` keeps ``\\n`` and ``\\t`` (and reads ``\\r\\n`` as ``\\n``), for a byte
    stream such as pdb's output; otherwise they are escaped too, for one-line fields.
    """
    if not isinstance(text, str):
        text = str(text)
    if multiline:
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        return _MULTI_LINE.sub(_escape, text)
    return _ONE_LINE.sub(_escape, text)


def printable_tree(obj: Any) -> Any:
    """Decoded JSON with every string (keys too) made ``printable``, one-line: a copy, or
    ``obj`` itself when nothing in it needs escaping.

    Renderers clean what the service sent first and colour it afterwards, so no field can
    slip past and the CLI's own ANSI codes are never escaped.
    """
    try:
        # One pass in C instead of a Python call per string: a 200-thread dump with
        # locals is ~230 KB, and almost never holds anything to escape.
        text = json.dumps(obj, ensure_ascii=False)
    except (TypeError, ValueError):
        text = None
    if text is not None and not _JSON_C0.search(text) and not _MULTI_LINE.search(text):
        return obj
    return _clean(obj)


def _clean(obj: Any) -> Any:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if isinstance(k, str) else k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
