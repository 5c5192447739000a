"""Rendering a whole service: ``stacks --all`` (identical stacks across processes once) and
``ps`` (door first). Pure functions on results shaped as the agents send them."""

from __future__ import annotations

import re
import time
from typing import Any

from prodbug.grouping import group_threads_across
from prodbug.render import Style, render_ps, render_stacks
from prodbug.render_all import render_stacks_all

PLAIN = Style(False)
NASTY = "\x1b[2J\x1b]0;pwned\x07\u202e\x9b31m"
NASTY_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07\\u202e\\x9b31m"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")

SELECT = {"filename": "/usr/lib/python3.12/selectors.py", "lineno": 415, "function": "select",
          "line": "fd_event_list = self._selector.poll(timeout, max_ev)"}
WAIT = {"filename": "/srv/venv/lib/python3.12/site-packages/gunicorn/workers/sync.py",
        "lineno": 35, "function": "wait", "line": "ret = select.select(self.wait_fds, [], [], 1)"}
ARBITER = {"filename": "/srv/venv/lib/python3.12/site-packages/gunicorn/arbiter.py",
           "lineno": 357, "function": "sleep", "line": "ready = select.select(pipe, [], [], 1.0)"}
CHARGE = {"filename": "/srv/app/app.py", "lineno": 42, "function": "charge",
          "line": "time.sleep(3600)"}
IDLE = [SELECT, WAIT]


def _thread(ident: int, name: str, frames: list[dict[str, Any]], *, state: str = "waiting",
            wait: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ident": ident, "native_id": 7000 + ident, "daemon": False,
            "cpu_percent": 0.0, "state": state, "since_s": None,
            "wait": {"kind": "select", "what": "select / poll"} if wait is None else wait,
            "holds": [], "frames": frames, "truncated": False, **extra}


def _process(pid: int, role: str, argv: list[str],
             threads: list[dict[str, Any]]) -> dict[str, Any]:
    agent = _thread(99, "prodbug-agent", [ARBITER], state="running", agent=True)
    return {"pid": pid, "ppid": 1 if role == "door" else 100, "role": role, "argv": argv,
            "python": "3.12.3", "implementation": "cpython", "executable": "/usr/bin/python3",
            "threads": [*threads, agent], "deadlocks": [], "loops": [], "tasks": [],
            "tasks_truncated": False}


def _gunicorn(stuck_name: str = "MainThread", stuck_argv: str = "gunicorn: worker [shop]"
              ) -> dict[str, Any]:
    """A master, three idle workers, one worker stuck in app.py:42; one more did not answer."""
    worker = ["gunicorn: worker [shop]"]
    stuck = _thread(1, stuck_name, [CHARGE, WAIT], wait={"kind": "sleep", "what": "time.sleep"},
                    since_s=125.0)
    busy = _thread(2, "heartbeat", [SELECT], state="running", wait={}, cpu_percent=97.4)
    processes = [  # in no particular order: the door comes first all the same
        _process(103, "member", worker, [_thread(1, "MainThread", IDLE, since_s=300.0)]),
        _process(104, "member", [stuck_argv], [stuck, busy]),
        _process(100, "door", ["gunicorn: master [shop]"], [_thread(1, "MainThread", [ARBITER])]),
        _process(101, "member", worker, [_thread(1, "MainThread", IDLE, since_s=61.0)]),
        _process(102, "member", worker, [_thread(1, "MainThread", IDLE, since_s=90.0)]),
    ]
    return {"processes": processes, "missing": [{"pid": 812, "reason": "no reply within 2s"}]}


EXPECTED = """\
5 processes (door pid 100, 4 members); 1 did not answer: pid 812 (no reply within 2s)

PID  ROLE    THREADS  HOT                  STACKS   COMMAND
100  door    1        -                    1 below  gunicorn: master [shop]
101  member  1        -                    #1       gunicorn: worker [shop]
102  member  1        -                    #1       gunicorn: worker [shop]
103  member  1        -                    #1       gunicorn: worker [shop]
104  member  2        'heartbeat' 97% CPU  2 below  gunicorn: worker [shop]

#1 3 threads in 3 processes (pid 101 'MainThread', pid 102 'MainThread', pid 103 'MainThread'): \
waiting 1m01s+ on select / poll, the same stack:
    select (selectors.py:415)
        fd_event_list = self._selector.poll(timeout, max_ev)
    wait (gunicorn/workers/sync.py:35)
        ret = select.select(self.wait_fds, [], [], 1)

Process 100 (door): gunicorn: master [shop]
Thread 7001 'MainThread' (waiting on select / poll, 0% CPU)
    sleep (gunicorn/arbiter.py:357)
        ready = select.select(pipe, [], [], 1.0)

Process 104 (member): gunicorn: worker [shop]
Thread 7001 'MainThread' (waiting 2m05s+ on time.sleep, 0% CPU)
    charge (/srv/app/app.py:42)
        time.sleep(3600)
    wait (gunicorn/workers/sync.py:35)
        ret = select.select(self.wait_fds, [], [], 1)

Thread 7002 'heartbeat' (running, 97% CPU)
    select (selectors.py:415)
        fd_event_list = self._selector.poll(timeout, max_ev)
"""


def test_identical_worker_stacks_once_and_the_stuck_worker_under_its_pid() -> None:
    assert render_stacks_all(_gunicorn(), PLAIN) == EXPECTED


def test_identical_stacks_within_one_process_group_with_the_others() -> None:
    pool = [_thread(i, f"pool-{i}", IDLE) for i in (1, 2)]
    processes = [_process(101, "member", ["w"], pool),
                 _process(102, "member", ["w"], [_thread(1, "pool-1", IDLE)]),
                 _process(200, "door", ["w"], [_thread(1, "MainThread", [CHARGE])])]

    groups = group_threads_across(processes)
    text = render_stacks_all({"processes": processes, "missing": []}, PLAIN)

    assert [(g["count"], g["members"], g["pids"]) for g in groups] == [
        (3, [(101, 1, "pool-1"), (101, 2, "pool-2"), (102, 1, "pool-1")], [101, 102]),
        (1, [(200, 1, "MainThread")], [200])]
    lines = text.splitlines()
    assert lines[0] == "3 processes (door pid 200, 2 members)"
    assert [line.split()[0] for line in lines[3:6]] == ["200", "101", "102"]  # door first
    assert ("#1 3 threads in 2 processes (pid 101 'pool-1', 'pool-2'; pid 102 'pool-1'): "
            "waiting on select / poll, the same stack:") in text.splitlines()
    assert text.count("select (selectors.py:415)") == 1
    assert "Process 200 (door): w\nThread 7001 'MainThread'" in text


def test_ungrouped_shows_every_process_in_full_door_first() -> None:
    result = _gunicorn()
    by_pid = {p["pid"]: p for p in result["processes"]}

    text = render_stacks_all(result, PLAIN, group=False)

    expected = EXPECTED.splitlines()[0] + "\n\n" + "\n".join(
        f"=== pid {pid} ({by_pid[pid]['role']}) ===\n"
        + render_stacks(by_pid[pid], PLAIN, group=False) for pid in (100, 101, 102, 103, 104))
    assert text == expected


def test_service_text_is_escaped_in_every_view() -> None:
    result = _gunicorn(stuck_name=f"Main{NASTY}", stuck_argv=f"worker{NASTY}")
    result["missing"][0]["reason"] = f"gone{NASTY}"
    entries = [{"pid": 104, "role": "member", "argv": [f"worker{NASTY}"],
                "service": f"shop{NASTY}"}]

    grouped = render_stacks_all(result, Style(True))
    flat = render_stacks_all(result, Style(True), group=False)
    table = render_ps(entries, Style(True), service=f"shop{NASTY}")

    ours = re.compile(r"\x1b\[[0-9;]*m")  # our colours: what remains must hold no raw control
    for text in (grouped, flat, table):
        assert not [c for c in RAW if c in ours.sub("", text)], text
    plain = ours.sub("", grouped)
    assert f"104  member  2        'heartbeat' 97% CPU  2 below  worker{NASTY_SHOWN}" in plain
    assert f"Thread 7001 'Main{NASTY_SHOWN}' (waiting 2m05s+" in plain
    assert f"pid 812 (gone{NASTY_SHOWN})" in plain
    assert f"'Main{NASTY_SHOWN}'" in ours.sub("", flat)
    assert ours.sub("", table).startswith(f"service 'shop{NASTY_SHOWN}': no door, 1 member\n")


def test_ps_door_first_members_by_pid_and_dashes_for_what_is_unknown() -> None:
    started = time.time() - 3990  # 1h06m30s: the minute stays the same however slow the run
    entries = [
        {"pid": 102, "ppid": 100, "role": "member", "service": "shop", "argv": ["gunicorn: w"],
         "started_at": started, "cpu_percent": 97.25, "rss_bytes": 3 << 29, "threads": 4,
         "sessions": 0, "debugpy": "off", "debugpy_since": None, "endpoint": "ipc:///r/102"},
        {"pid": 99, "ppid": 100, "role": "member", "service": "shop", "argv": ["gunicorn: w"],
         "started_at": started, "endpoint": "ipc:///r/99"},  # an older agent: says less;
        # a pid below the door's (pids wrap): the door comes first all the same
        {"pid": 100, "ppid": 1, "role": "door", "service": "shop", "argv": ["gunicorn: m"],
         "started_at": started, "cpu_percent": 0.0, "rss_bytes": 41 << 20, "threads": 2,
         "sessions": 1, "debugpy": "ready", "debugpy_since": started,
         "tcp_endpoint": "tcp://10.0.0.5:7661"},
    ]

    table = render_ps(entries, PLAIN, service="shop")
    local = render_ps([{"pid": 7, "role": "local", "argv": ["python", "x.py"],
                        "started_at": started, "debugpy_loaded": True}], PLAIN)

    assert table == (
        "service 'shop': door pid 100, 2 members\n"
        "PID  PPID  ROLE    UPTIME  CPU%  RSS   THREADS  SESSIONS  DEBUGPY      COMMAND\n"
        "100  1     door    1h06m   0.0   41M   2        1         ready 1h06m  gunicorn: m\n"
        "99   100   member  1h06m   -     -     -        -         -            gunicorn: w\n"
        "102  100   member  1h06m   97.2  1.5G  4        0         off          gunicorn: w\n")
    assert local == (
        "PID  PPID  ROLE   UPTIME  CPU%  RSS  THREADS  SESSIONS  DEBUGPY  COMMAND\n"
        "7    -     local  1h06m   -     -    -        -         loaded   python x.py\n")


HANDLER = {"filename": "/srv/app/views.py", "lineno": 18, "function": "handle",
           "line": "await asyncio.sleep(30)"}
POLL = {"filename": "/srv/app/feeds.py", "lineno": 7, "function": "poll", "line": "await fut"}


def _uvicorn(pid: int, *, poller: bool) -> dict[str, Any]:
    process = _process(pid, "member", ["uvicorn", "app:api"],
                       [_thread(1, "MainThread", [SELECT])])
    loop = 5000 + pid
    process["loops"] = [{"id": loop, "thread": 1, "thread_name": "MainThread",
                         "type": "_UnixSelectorEventLoop", "tasks": 3 if poller else 2}]
    process["tasks"] = [{"id": n, "name": f"Task-{n}", "state": "pending", "loop": loop,
                         "awaiting": "sleep", "frames": [HANDLER]} for n in (1, 2)]
    if poller:
        process["tasks"].append({"id": 3, "name": "poller", "state": "pending", "loop": loop,
                                 "awaiting": "Future", "frames": [POLL]})
    return process


def test_tasks_deadlocks_and_c_level_dumps_of_several_processes() -> None:
    deadlocked = _uvicorn(102, poller=False)
    deadlocked["deadlocks"] = [{"description": "deadlock: 'alpha' waits for 'beta'"}]
    c_level = {"pid": 103, "argv": ["uvicorn", "app:api"], "fallback": "faulthandler",
               "threads": [{"ident": 0x7F00, "current": True, "frames": [
                   {"filename": "/srv/app/native.py", "lineno": 9, "function": "crunch"}]}]}

    text = render_stacks_all({"processes": [c_level, deadlocked, _uvicorn(101, poller=True)],
                              "missing": []}, PLAIN)

    assert text == """\
3 processes

DEADLOCK in pid 102: 'alpha' waits for 'beta'

PID  ROLE    THREADS  HOT  STACKS              COMMAND
101  member  1        -    #1, #2 + 1 below    uvicorn app:api
102  member  1        -    #1, #2              uvicorn app:api
103  -       1        -    C-level dump below  uvicorn app:api

#1 2 threads in 2 processes (pid 101 'MainThread', pid 102 'MainThread'): \
waiting on select / poll, the same stack:
    select (selectors.py:415)
        fd_event_list = self._selector.poll(timeout, max_ev)

#2 4 asyncio tasks in 2 processes (pid 101 'Task-1', 'Task-2'; pid 102 'Task-1', 'Task-2'): \
pending awaiting sleep, the same stack:
    handle (/srv/app/views.py:18)
        await asyncio.sleep(30)

Process 101 (member): uvicorn app:api
Event loop _UnixSelectorEventLoop in thread 'MainThread': 3 tasks (2 in shared stacks)
  Task: 'poller' (pending awaiting Future)
      poll (/srv/app/feeds.py:7)
          await fut

Process 103: uvicorn app:api
C-level dump (faulthandler): frames only; no CPU, states, source lines or tasks
  Thread 0x7f00 (received the signal)
      crunch (/srv/app/native.py:9)
"""
