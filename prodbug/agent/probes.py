"""(Being built: issue #12.)"""

from __future__ import annotations

from typing import Any

from prodbug.errors import RequestError


def probe_open(desk: Any, ctx: Any) -> dict[str, Any]:
    raise RequestError("not available yet", "unsupported")

