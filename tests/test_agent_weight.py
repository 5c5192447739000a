"""The agent's weight in its host: starting it loads only what serving needs; a command
loads what it needs when first asked (scripts/bench_weight.py has the figures)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time

from prodbug.client import Client

#: Loaded by a command or a session when first used, never by ``start_agent()``: pdb and
#: its kin (sessions), debugpy/pydevd (vscode), psutil (info), ctypes (stacks' /proc
#: reader, the opt-in hang timer), asyncio (only ever looked at when the host has it), and
#: the agent's own modules behind ``stacks``, ``info``, a TCP allow-list and a service.
HEAVY = (
    "asyncio", "bdb", "cmd", "code", "ctypes", "debugpy", "pdb", "pprint", "psutil",
    "pydevd", "prodbug.agent.grouping", "prodbug.agent.hooks", "prodbug.agent.info",
    "prodbug.agent.keyring", "prodbug.agent.procfs", "prodbug.agent.relay",
    "prodbug.agent.saferepr",
    "prodbug.agent.stacks", "prodbug.agent.tasks", "prodbug.agent.waits", "prodbug.client",
    "prodbug.cli", "secrets", "hmac", "shutil",
)

BARE_HOST = f"""
import json, sys
import prodbug
prodbug.start_agent()
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""

#: A host that uses asyncio itself: one named task waits in a loop thread.
ASYNC_HOST = f"""
import asyncio, json, os, sys, threading
import prodbug

started = threading.Event()

async def probe(event):
    await event.wait()

async def serve():
    event = asyncio.Event()
    task = asyncio.create_task(probe(event), name="weight-probe")
    await asyncio.sleep(0)
    started.set()
    await task

threading.Thread(target=asyncio.run, args=(serve(),), name="loop-thread", daemon=True).start()
started.wait()
agent = prodbug.start_agent()
loaded = [m for m in {HEAVY!r} if m in sys.modules and m != "asyncio"]
print("READY " + json.dumps({{"pid": os.getpid(), "ipc": agent.ipc_endpoint,
                              "loaded": loaded}}), flush=True)
sys.stdin.read()
"""


def _ready_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, object]:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not readable:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return dict(json.loads(line[len("READY "):]))
    raise AssertionError(f"the host never got ready (exit code {proc.poll()})")


def test_start_agent_loads_no_command_modules(base_env) -> None:
    out = subprocess.run([sys.executable, "-c", BARE_HOST], env=base_env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_commands_load_what_they_need_when_asked(base_env) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ASYNC_HOST], env=base_env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        facts = _ready_line(proc, time.monotonic() + 30)
        assert facts["loaded"] == []
        with Client(str(facts["ipc"]), timeout=30) as client:
            result = client.request("stacks", {"cpu_interval": 0, "locals": 1})
            info = client.request("info", {})
        tasks = {t["name"]: t for t in result["tasks"]}
        functions = [f["function"] for f in tasks["weight-probe"]["frames"]]
        assert functions[-1] == "probe"  # the task's own coroutine, outermost
        loop_thread = next(t for t in result["threads"] if t["name"] == "loop-thread")
        assert "locals" in loop_thread["frames"][0]
        assert facts["pid"] == info["pid"]
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
