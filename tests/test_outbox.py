"""The agent's outbound queue against real ZeroMQ sockets: a peer that reads slowly, or
not at all for a while, still gets every message, in order; one that never reads makes
its route overflow (its owner is told) instead of growing without bound."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from prodbug.agent.outbox import Outbox


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, 4)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # as the agent sets it
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVHWM, 4)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    dealer.setsockopt(zmq.ROUTING_ID, b"operator")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    assert router.poll(10_000)
    router.recv_multipart()
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def test_nothing_is_lost_when_the_peer_does_not_read_for_a_while(pair) -> None:
    router, dealer = pair
    outbox = Outbox(limit=64 << 20)
    route = (router, b"operator")
    payload = b"x" * 65536
    for n in range(300):  # ~20 MB: far more than the pipes and kernel buffers hold
        outbox.send(route, b"%06d" % n + payload)
    assert outbox.pending  # the peer's pipe is full: the rest waits, in order
    received = []
    deadline = time.monotonic() + 60
    while len(received) < 300 and time.monotonic() < deadline:
        outbox.flush()  # as the agent's loop does, every 10 ms while anything waits
        if dealer.poll(10):
            received.append(int(dealer.recv()[:6]))
    assert received == list(range(300))
    assert not outbox.pending


def test_a_peer_that_never_reads_overflows_its_route_instead_of_growing(pair) -> None:
    router, _dealer = pair
    outbox = Outbox(limit=1 << 20)
    route = (router, b"operator")
    for _ in range(200):
        outbox.send(route, b"y" * 65536)
    assert route in outbox.overflowed
    assert outbox.queued(route) == 0  # what could not go was let go, and it was said
    outbox.forget(route)
    assert route not in outbox.overflowed


def test_a_route_whose_peer_is_gone_is_dropped(pair) -> None:
    router, _dealer = pair
    outbox = Outbox()
    outbox.send((router, b"nobody"), b"z")
    assert not outbox.pending
