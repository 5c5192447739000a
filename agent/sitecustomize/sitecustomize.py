"""Start the prodbug agent in any Python process, with no code change.

    PYTHONPATH=/path/to/agent/sitecustomize PRODBUG_AUTOSTART=1 python app.py

Starts only when ``PRODBUG_AUTOSTART=1`` or ``PRODBUG_LISTEN`` is set, so that tools run
in the same image (pip, a shell's python) are left alone. Never raises.
"""

import contextlib
import os

if os.environ.get("PRODBUG_AUTOSTART") == "1" or os.environ.get("PRODBUG_LISTEN"):
    # Not even prodbug importable: the process must still run. prodbug.autostart logs
    # its own failures.
    with contextlib.suppress(Exception):
        import prodbug.autostart  # noqa: F401
