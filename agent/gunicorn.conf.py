"""gunicorn settings that start the prodbug agent, for services that do not use
``prodbug run`` (which needs no config file: ``prodbug run -- gunicorn app:app``).

    PRODBUG_LISTEN=tcp://127.0.0.1:7661 \
    PRODBUG_SERVER_SECRET_KEY=/etc/prodbug/server.key_secret \
    PRODBUG_AUTHORIZED_KEYS=/etc/prodbug/authorized \
    gunicorn -c agent/gunicorn.conf.py app:app

The master owns the TCP port; every worker forked from it starts its own agent on its
own ipc endpoint (``prodbug ps`` on the host lists them; ``prodbug stacks --pid N``).
"""

import logging


def when_ready(server: object) -> None:
    try:
        import prodbug

        prodbug.start_agent()
    except Exception:  # the service must start even when the agent cannot
        logging.getLogger("prodbug.agent").exception("prodbug agent not started")
