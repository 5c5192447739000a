"""Pure pieces: grouping, faulthandler parsing, TARGET parsing, config."""

from __future__ import annotations

import pytest

from prodbug.config import AgentConfig, parse_listen
from prodbug.errors import ConfigError
from prodbug.faultdump import parse_dump
from prodbug.grouping import group_tasks, group_threads
from prodbug.target import resolve_target

FRAME_A = [{"filename": "a.py", "lineno": 1, "function": "f"}]
FRAME_B = [{"filename": "a.py", "lineno": 2, "function": "g"}]


def test_group_threads_largest_first_agent_left_out() -> None:
    threads = [
        {"name": f"w-{i}", "ident": i, "state": "waiting", "frames": FRAME_A} for i in range(3)
    ] + [{"name": "x", "ident": 9, "state": "running", "frames": FRAME_A},
         {"name": "agent", "ident": 10, "state": "running", "frames": FRAME_B, "agent": True}]
    groups = group_threads(threads)
    assert [(g["count"], g["members"]) for g in groups] == [(3, [0, 1, 2]), (1, [9])]


def test_group_tasks_by_loop_state_and_chain() -> None:
    tasks = [{"name": f"t{i}", "id": i, "loop": 1, "state": "pending", "awaiting": "x",
              "frames": FRAME_A if i % 2 else FRAME_B} for i in range(5)]
    assert sorted(g["count"] for g in group_tasks(tasks)) == [2, 3]


def test_parse_faulthandler_output() -> None:
    text = (
        "Timeout (0:00:02)!\n"
        "Thread 0x00007f5a1b7fe6c0 (most recent call first):\n"
        '  File "/app/x.py", line 12 in catastrophic\n'
        '  File "/usr/lib/python3.12/threading.py", line 1010 in run\n'
        "\n"
        "Current thread 0x00007f5a1c000000 (most recent call first):\n"
        '  File "/app/main.py", line 3 in <module>\n'
    )
    threads = parse_dump(text)
    assert [(t["ident"], t["current"], len(t["frames"])) for t in threads] == [
        (0x7F5A1B7FE6C0, False, 2), (0x7F5A1C000000, True, 1)]
    assert threads[0]["frames"][0] == {"filename": "/app/x.py", "lineno": 12,
                                       "function": "catastrophic"}


@pytest.mark.parametrize(("text", "endpoint"), [
    ("localhost", "tcp://localhost:7661"),
    ("10.0.0.5:9000", "tcp://10.0.0.5:9000"),
    ("[::1]:7661", "tcp://[::1]:7661"),
    ("tcp://127.0.0.1:1", "tcp://127.0.0.1:1"),
    ("ipc:///run/x.sock", "ipc:///run/x.sock"),
])
def test_targets(text: str, endpoint: str) -> None:
    assert resolve_target(text).endpoint == endpoint


def test_listen_and_env() -> None:
    assert parse_listen("tcp://[::1]:7661") == ("[::1]", 7661, True)
    assert parse_listen("tcp://localhost:*") == ("localhost", 0, True)
    assert parse_listen("tcp://db.internal:7661")[2] is False
    config = AgentConfig.load({"PRODBUG_HANG_DUMP": "5", "PRODBUG_DUMP_SIGNAL": "off"})
    assert (config.hang_dump, config.dump_signal) == (5.0, "off")
    with pytest.raises(ConfigError, match="at least 2"):
        AgentConfig.load({"PRODBUG_HANG_DUMP": "0.5"})
    with pytest.raises(ConfigError, match="PRODBUG_DUMP_SIGNAL"):
        AgentConfig.load({"PRODBUG_DUMP_SIGNAL": "USR1"})
    with pytest.raises(ConfigError, match="boolean"):
        AgentConfig.load({"PRODBUG_ALLOW_REMOTE": "maybe"})
