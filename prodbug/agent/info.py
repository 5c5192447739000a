"""The ``info`` command: who the process is, what it costs, and what debug machinery it has."""

from __future__ import annotations

import _tracemalloc
import faulthandler
import os
import sys
import threading
import time
from typing import Any

import psutil

from prodbug._version import __version__
from prodbug.agent.stacks import process_header
from prodbug.protocol import PROTOCOL_VERSION

__all__ = ["collect_info", "debug_machinery"]


def debug_machinery() -> dict[str, Any]:
    """Which debuggers and hooks are loaded or active: what a session would interact with."""
    tools: dict[str, str] = {}
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        for tool_id in range(6):
            name = monitoring.get_tool(tool_id)
            if name is not None:
                tools[str(tool_id)] = name
    return {
        "debugpy_loaded": "debugpy" in sys.modules,
        "pdb_loaded": "pdb" in sys.modules,
        "trace_function": sys.gettrace() is not None,
        "profile_function": sys.getprofile() is not None,
        # What new threads get (threading.settrace), and whether allocations are traced:
        # what a session left behind would show here.
        "threading_trace": threading.gettrace() is not None,
        "tracemalloc_tracing": bool(_tracemalloc.is_tracing()),
        "faulthandler_enabled": faulthandler.is_enabled(),
        "monitoring_tools": tools,
    }


def _cwd() -> str | None:
    """The working directory; one a deploy removed is named as the kernel names it
    ("/srv/app/releases/41 (deleted)")."""
    try:
        return os.getcwd()
    except OSError:
        try:
            return os.readlink("/proc/self/cwd")
        except OSError:
            return None


def collect_info(agent_facts: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` result; ``agent_facts`` are the agent's endpoints and start time."""
    proc = psutil.Process()
    with proc.oneshot():
        created = proc.create_time()
        cpu = proc.cpu_times()
        rss = proc.memory_info().rss
        num_threads = proc.num_threads()
    uptime = max(time.time() - created, 1e-9)
    return {
        **process_header(),
        "cwd": _cwd(),
        "python_version": sys.version,
        "uptime_s": round(uptime, 3),
        "rss_bytes": rss,
        "cpu_user_s": round(cpu.user, 3),
        "cpu_system_s": round(cpu.system, 3),
        "cpu_percent_avg": round(100.0 * (cpu.user + cpu.system) / uptime, 1),
        "threads": num_threads,
        "python_threads": threading.active_count(),
        "agent": {"version": __version__, "protocol": PROTOCOL_VERSION, **agent_facts},
        "debug": debug_machinery(),
    }
