"""Start the prodbug agent in any Python process, with no code change.

    PYTHONPATH=/path/to/agent/sitecustomize PRODBUG_AUTOSTART=1 python app.py

Starts only when ``PRODBUG_AUTOSTART=1`` or ``PRODBUG_LISTEN`` is set, so that tools run
in the same image (pip, a shell's python) are left alone. Never raises.
"""

import os

if os.environ.get("PRODBUG_AUTOSTART") == "1" or os.environ.get("PRODBUG_LISTEN"):
    try:
        import prodbug.autostart  # noqa: F401  (logs its own failures)
    except Exception:  # not even prodbug importable: the process must still run
        pass
