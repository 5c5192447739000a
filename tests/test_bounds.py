"""The agent's bounds (docs/security.md "Bounds", docs/protocol.md, docs/stacks.md), each
reached in a real process: a handler that raises, an oversized request, a stack deeper
than the frame limit, a source line longer than the line limit, more locals than a
dump's budget and more asyncio tasks than a dump keeps."""

from __future__ import annotations

import linecache
import time
from typing import Any

import pytest
import zmq
from conftest import TARGETS, Target, run_cli
from zmq.utils.monitor import recv_monitor_message

from prodbug import protocol
from prodbug.agent.saferepr import BUDGET_SPENT, Limits
from prodbug.agent.stacks import LINE_CUT, MAX_DEPTH
from prodbug.agent.tasks import MAX_TASKS
from prodbug.client import Client
from prodbug.errors import RemoteError

LOCALS_BUDGET = Limits().total  # 64 KiB: docs/stacks.md, "Locals"
VALUE_CHARS = Limits().chars


def _endpoint(env: dict[str, str], target: Target) -> str:
    return f"ipc://{env['PRODBUG_RUNTIME_DIR']}/{target.pid}.sock"


def _by_name(proc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in proc["threads"]}


def test_a_handler_that_raises_answers_internal_error_and_the_agent_serves_on(
        spawn, base_env) -> None:
    """No command raises on purpose, so this takes a real situation the agent did not
    plan for: the host replaced ``os.getcwd`` (which ``info`` calls) with one that raises."""
    target = spawn("bounds_deep", "--raising-getcwd", env=base_env)
    with Client(_endpoint(base_env, target), timeout=20) as client:
        with pytest.raises(RemoteError) as failed:
            client.request("info")
        assert failed.value.code == "internal_error"
        assert str(failed.value).startswith("info failed in the agent: RuntimeError")
        # The same connection is served on, and the host wrote nothing about it.
        assert client.request("ping")["pid"] == target.pid
        assert _by_name(client.request("stacks", {"cpu_interval": 0}))["deep"]
    assert [line for line in target.output if not line.startswith("READY ")] == []
    assert target.proc.poll() is None


def test_info_of_a_process_whose_working_directory_was_removed(spawn, base_env) -> None:
    """A deploy that replaced the release directory: ``info`` still answers, and says so."""
    target = spawn("bounds_deep", "--orphan-cwd", env=base_env)
    with Client(_endpoint(base_env, target), timeout=20) as client:
        cwd = client.request("info")["cwd"]
    assert cwd.startswith("/tmp/pb-cwd-") and cwd.endswith(" (deleted)"), cwd


def _send(sock: zmq.Socket[bytes], rid: str, **args: Any) -> None:
    sock.send(protocol.encode_request(protocol.Request(id=rid, cmd="ping", args=args)))


def _next_event(monitor: zmq.Socket[bytes], wanted: int, deadline: float) -> bool:
    while monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        if recv_monitor_message(monitor)["event"] == wanted:
            return True
    return False


def test_a_request_over_the_size_limit_closes_only_that_connection(spawn, base_env) -> None:
    """docs/protocol.md 5.2: a message larger than MAXMSGSIZE (1 MiB by default) gets no
    reply: libzmq closes that connection. The next request is answered."""
    target = spawn("bounds_deep", env=base_env)
    limit = 1 << 20
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(_endpoint(base_env, target))
        deadline = time.monotonic() + 20
        assert _next_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, deadline)
        _send(sock, "just-under", pad="x" * (limit - 200))  # the frame fits: answered
        assert sock.poll(20_000), "no reply to a request under the limit"
        reply = protocol.decode_message(sock.recv())
        assert isinstance(reply, protocol.Reply) and reply.id == "just-under" and reply.ok

        _send(sock, "too-big", pad="x" * limit)
        assert _next_event(monitor, zmq.EVENT_DISCONNECTED, time.monotonic() + 20), \
            "the agent did not close the connection that sent more than MAXMSGSIZE"
        _send(sock, "next")  # queued until the DEALER has reconnected
        assert sock.poll(20_000), "the agent did not answer after dropping a big request"
        reply = protocol.decode_message(sock.recv())
        assert isinstance(reply, protocol.Reply) and reply.id == "next" and reply.ok
        assert not sock.poll(0)  # and "too-big" was never answered
    finally:
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    with Client(_endpoint(base_env, target), timeout=20) as client:
        assert client.request("ping")["pid"] == target.pid


def test_frames_lines_locals_and_tasks_are_cut_with_markers(spawn, base_env) -> None:
    target = spawn("bounds_deep", "--tasks", str(MAX_TASKS + 1), env=base_env)
    with Client(_endpoint(base_env, target), timeout=30) as client:
        proc = client.request("stacks", {"cpu_interval": 0, "locals": 1})
    threads = _by_name(proc)

    # Frames: the innermost MAX_DEPTH are kept, the outer ones cut and the thread marked.
    deep = threads["deep"]
    assert deep["truncated"] is True
    assert len(deep["frames"]) == MAX_DEPTH
    assert {f["function"] for f in deep["frames"]} == {"deep"}  # no Thread.run: cut
    assert deep["frames"][0]["line"] == "BLOCK.acquire()"
    assert threads["longline"]["truncated"] is False

    # A source line longer than 200 characters: cut, and the cut marked.
    (frame, *_) = threads["longline"]["frames"]
    assert frame["lineno"] == target.facts["long_line"]
    source = linecache.getline(str(TARGETS / "bounds_deep.py"), frame["lineno"]).strip()
    assert len(source) > 200
    assert frame["line"] == source[: 200 - len(LINE_CUT)] + LINE_CUT
    assert len(frame["line"]) == 200

    # Locals: once the dump's budget is spent, the rest of that frame's values show the
    # marker and later frames show no locals at all; the dump says so.
    assert proc["locals_truncated"] is True
    hoards = [threads[f"hoard-{i}"]["frames"][0] for i in range(12)]
    cut = [f for f in hoards if BUDGET_SPENT in (f.get("locals") or {}).values()]
    assert len(cut) == 1
    values = list(cut[0]["locals"].values())
    first = values.index(BUDGET_SPENT)
    assert first > 0 and set(values[first:]) == {BUDGET_SPENT}
    assert any("locals" not in f for f in hoards)
    shown = sum(len(v) for t in proc["threads"] for f in t["frames"]
                for v in (f.get("locals") or {}).values() if v != BUDGET_SPENT)
    assert LOCALS_BUDGET <= shown < LOCALS_BUDGET + VALUE_CHARS

    # asyncio: at most MAX_TASKS tasks, and the dump says there were more.
    assert proc["tasks_truncated"] is True
    assert len(proc["tasks"]) == MAX_TASKS

    # --no-group: the twelve hoarders have the same stack (grouped, one member shown).
    human = run_cli("stacks", "--pid", str(target.pid), "--locals", "--no-group",
                    env=base_env, timeout=60)
    assert human.returncode == 0, human.stderr
    text = human.stdout
    deep_block = text[text.index("'deep' ("):]
    deep_block = deep_block[: deep_block.index("\n\n")]
    assert deep_block.endswith("    ... (outer frames cut)")
    assert f"        {source[: 200 - len(LINE_CUT)]}{LINE_CUT}\n" in text
    assert f" = {BUDGET_SPENT}\n" in text
    assert f"(more tasks than shown: the dump keeps at most {MAX_TASKS})" in text
    assert "(locals cut: this dump's 64 KiB for locals was spent" in text
