"""pdb on threads that were running before the session opened, on every Python (issue #13):
the main thread's own loop, a long-lived pool thread, an asyncio handler. 3.12+ goes through
sys.monitoring, 3.10/3.11 through a trace function installed in those threads
(prodbug/agent/foreign_trace.py); the promises are the same."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from conftest import TARGETS, Target, wait_for
from test_pdb import PROMPT

SOURCE = (TARGETS / "mainloop.py").read_text().splitlines()
MAIN_LINE = next(n for n, text in enumerate(SOURCE, 1) if "# MAIN-LINE" in text)
AIO_LINE = next(n for n, text in enumerate(SOURCE, 1) if "# AIO-LINE" in text)


def _counter(target: Target) -> int:
    try:
        return int(Path(target.facts["counter"]).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _traced(target: Target) -> str:
    try:
        return Path(target.facts["counter"] + ".traced").read_text()
    except FileNotFoundError:
        return "?"


def _counting(target: Target) -> bool:
    start = _counter(target)
    return wait_for(lambda: _counter(target) > start + 3, timeout=30)


@pytest.fixture
def mainloop(spawn: Callable[..., Target], base_env: dict[str, str],
             tmp_path: Path) -> Callable[..., Target]:
    def start(*args: str) -> Target:
        counter = str(tmp_path / "counter")
        target = spawn("mainloop", *args, env={**base_env, "COUNTER_FILE": counter,
                                               "PRODBUG_SESSION_HEARTBEAT": "2"})
        target.facts["counter"] = counter
        assert _counting(target)
        return target
    return start


def test_break_stops_the_main_threads_running_loop(mainloop, cli) -> None:
    target = mainloop()
    child = cli("pdb", "--pid", str(target.pid), "--break", f"mainloop.py:{MAIN_LINE}")
    child.expect("stopped thread 'MainThread'")
    child.expect(PROMPT)
    stopped_at = _counter(target)
    child.sendline("p n")
    child.expect(r"\r\n(\d+)\r\n")
    assert int(child.match.group(1)) in (stopped_at, stopped_at + 1)
    child.expect(PROMPT)
    assert not wait_for(lambda: _counter(target) > stopped_at + 1, timeout=0.5)  # stopped
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    assert _counting(target)
    assert wait_for(lambda: _traced(target) == "0")  # no trace function left behind


def test_thread_stops_a_long_lived_pool_thread(mainloop, cli) -> None:
    target = mainloop()
    child = cli("pdb", "--pid", str(target.pid), "--thread", "pool_0")
    child.expect("stopped thread 'pool_0'")
    child.expect(PROMPT)
    child.sendline("where")
    child.expect("thread.py")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect("session ended")
    child.expect(pexpect.EOF)
    assert _counting(target)  # the main thread never stopped


def test_break_in_an_asyncio_handler_then_the_request_completes(mainloop, cli) -> None:
    target = mainloop("aio")
    child = cli("pdb", "--pid", str(target.pid), "--break", f"mainloop.py:{AIO_LINE}")
    child.expect("waiting for a thread to reach it")
    replies: list[bytes] = []

    def ask() -> None:
        with socket.create_connection(("127.0.0.1", target.facts["port"]), timeout=60) as s:
            s.sendall(b"prodbug\n")
            replies.append(s.recv(100))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    child.expect(PROMPT)
    child.sendline("p name")
    child.expect("'prodbug'")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect(pexpect.EOF)
    asker.join(60)
    assert replies == [b"hello prodbug\n"]
    assert _counting(target)


def test_operator_killed_while_the_main_thread_is_stopped(mainloop, cli) -> None:
    target = mainloop()
    child = cli("pdb", "--pid", str(target.pid), "--break", f"mainloop.py:{MAIN_LINE}")
    child.expect("stopped thread 'MainThread'")
    child.expect(PROMPT)
    child.kill(signal.SIGKILL)
    child.wait()
    assert _counting(target)  # the heartbeat (2 s) ran out: the loop goes on by itself
    assert wait_for(lambda: _traced(target) == "0")
