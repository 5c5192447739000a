"""``import prodbug.autostart``: start the agent from ``PRODBUG_*`` variables at import.

For services that should not change code: add the import to a ``sitecustomize`` or a
gunicorn config. A failure never stops the host: it is logged to ``prodbug.agent``
and the service starts without the agent.
"""

from __future__ import annotations

import logging

from prodbug.errors import ProdbugError

__all__: list[str] = []

# Never the host's stderr, even when prodbug.agent cannot be imported (it sets the same).
if not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("prodbug").handlers):
    logging.getLogger("prodbug").addHandler(logging.NullHandler())

try:
    from prodbug.agent import start_agent

    start_agent()
except ProdbugError as _exc:
    logging.getLogger("prodbug.agent").error("prodbug agent not started: %s", _exc)
except Exception:  # not our error either, but the host must still start
    logging.getLogger("prodbug.agent").exception("prodbug agent not started")
