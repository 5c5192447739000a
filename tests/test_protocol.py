"""The wire format: round trips, every malformed shape, and the examples in docs/protocol.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from prodbug import protocol
from prodbug.errors import ProtocolError

DOC = Path(__file__).parent.parent / "docs" / "protocol.md"


def test_request_round_trip() -> None:
    request = protocol.Request(id="a1", cmd="stacks", args={"cpu_interval": 0})
    assert protocol.decode_request(protocol.encode_request(request)) == request


def test_reply_round_trips() -> None:
    ok = protocol.Reply(id="a1", result={"pid": 1})
    assert protocol.decode_reply(protocol.encode_reply(ok)) == ok
    err = protocol.error_reply("a1", "forbidden", "needs debugger", needed_role="debugger")
    decoded = protocol.decode_reply(protocol.encode_reply(err))
    assert decoded == err
    assert decoded.ok is False


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe", "bad_request"),
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"id": "x", "cmd": "info"}', "bad_request"),
        (b'{"prodbug": true, "cmd": "info"}', "bad_request"),
        (b'{"prodbug": 1, "id": 5, "cmd": "info"}', "bad_request"),
        (b'{"prodbug": 1, "id": "' + b"x" * 65 + b'", "cmd": "info"}', "bad_request"),
        (b'{"prodbug": 1, "id": "x"}', "bad_request"),
        (b'{"prodbug": 1, "id": "x", "cmd": "info", "args": []}', "bad_request"),
        (b'{"prodbug": 2, "id": "x", "cmd": "info"}', "version_mismatch"),
    ],
)
def test_malformed_requests_are_refused_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(data)
    assert info.value.code == code


def test_version_mismatch_keeps_the_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(b'{"prodbug": 9, "id": "abc", "cmd": "info"}')
    assert info.value.request_id == "abc"


def test_roles_are_ordered() -> None:
    assert protocol.role_allows("observer", "stacks")
    assert protocol.role_allows("debugger", "stacks")
    assert not protocol.role_allows("observer", "audit")
    assert protocol.role_allows("debugger", "audit")
    assert not protocol.role_allows("admin", "stacks")
    assert not protocol.role_allows("debugger", "no-such-command")


def _doc_examples() -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [json.loads(b) for b in blocks]


def test_protocol_document_has_examples() -> None:
    examples = _doc_examples()
    assert sum("cmd" in e for e in examples) >= 4
    assert sum("ok" in e for e in examples) >= 4


@pytest.mark.parametrize("example", _doc_examples(),
                         ids=lambda e: str(e.get("cmd", e.get("event", e.get("ok")))))
def test_every_document_example_decodes(example: dict[str, object]) -> None:
    data = json.dumps(example).encode()
    if "event" in example:
        event = protocol.decode_message(data)
        assert isinstance(event, protocol.Event)
        assert (event.kind, event.session) == (example["event"], example["session"])
        assert protocol.decode_message(protocol.encode_event(event)) == event
    elif "cmd" in example:
        if example["prodbug"] in protocol.SUPPORTED_VERSIONS:
            assert protocol.decode_request(data).cmd == example["cmd"]
            assert example["cmd"] in protocol.COMMANDS
        else:
            with pytest.raises(ProtocolError, match="not supported"):
                protocol.decode_request(data)
    else:
        reply = protocol.decode_reply(data)
        if reply.error is not None:
            assert reply.error.code in protocol.ERROR_CODES
