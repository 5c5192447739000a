"""The in-process side: ``start_agent()`` and the one ``Agent`` each process runs."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import replace
from typing import Any

from prodbug.agent.server import THREAD_NAME, Agent
from prodbug.config import AgentConfig

__all__ = ["THREAD_NAME", "Agent", "current_agent", "start_agent"]

_log = logging.getLogger("prodbug.agent")
# A library never prints: without a handler, logging's last-resort one would write our
# warnings to the host's stderr when the host has not configured logging. (Set here, not
# in ``prodbug``, whose import the command line pays for too.)
if not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("prodbug").handlers):
    logging.getLogger("prodbug").addHandler(logging.NullHandler())
_lock = threading.Lock()
_agent: Agent | None = None
#: Agents inherited through fork: their zmq contexts belong to the parent, so a child
#: keeps them referenced and never closes or collects them.
_orphans: list[Agent] = []
_atexit_registered = False


def start_agent(**overrides: Any) -> Agent:
    """Start this process's agent, or return the one already running.

    Settings come from the ``PRODBUG_*`` environment variables; keyword arguments
    (``listen``, ``server_secret_key``, ``authorized_keys``, ``allow_remote``,
    ``runtime_dir``, ``audit_log``, ``max_message_size``) override them. Raises
    ``ConfigError`` with a one-line fix when the agent cannot start. Thread-safe;
    after ``os.fork()`` the child runs an agent of its own (local ipc only).
    """
    global _agent, _atexit_registered
    with _lock:
        if _agent is not None and _agent.running:
            if overrides:
                _log.debug("start_agent: already running; overrides ignored")
            return _agent
        agent = Agent(AgentConfig.load(**overrides))
        agent.start()
        _agent = agent
        if not _atexit_registered:
            atexit.register(_stop_at_exit)
            _atexit_registered = True
        return agent


def current_agent() -> Agent | None:
    """This process's running agent, if any."""
    agent = _agent
    return agent if agent is not None and agent.running else None


def _stop_at_exit() -> None:
    agent = _agent
    if agent is not None:
        agent.stop(timeout=2.0)


def _after_fork_in_child() -> None:
    global _agent, _lock
    _lock = threading.Lock()  # another thread may have held it at fork time
    parent = _agent
    _agent = None
    if parent is None or parent.pid == os.getpid():
        return
    _orphans.append(parent)
    try:
        parent.forget_after_fork()
    except Exception:  # an exception here would be printed on the host's stderr
        _log.debug("forgetting the parent's agent failed in child %d", os.getpid(),
                   exc_info=True)
    try:
        # The parent keeps the TCP port. A child of a service joins it as a member (it
        # reaches the port's door, and may take the port over when the door exits); any
        # other child is reachable over its own ipc endpoint only.
        config = parent.config.without_tcp() if parent.service is None else \
            replace(parent.config, service=parent.service)
        child = Agent(config)
        child.start(wait=False)
        _agent = child
    except Exception:  # a fork must never fail because of us
        _log.warning("could not start the agent in forked child %d", os.getpid(), exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
