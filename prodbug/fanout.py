"""``--all``: ask every process of a service (or every local agent) at once, and merge.

Through a door: one connection, one ``ps`` for the members, then one request per member
(the door relays them in parallel); on this host: one ipc connection per agent. Every
process gets the same deadline; one that has not answered by then is named, not awaited.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from prodbug import protocol, registry
from prodbug.client import Client, Credentials
from prodbug.errors import AuthError, ProdbugError

__all__ = ["ask_all_local", "ask_all_through"]


def _outcome(pid: int, reply: protocol.Reply | None, timeout: float,
             results: list[dict[str, Any]], missing: list[dict[str, Any]]) -> None:
    if reply is None:
        missing.append({"pid": pid, "reason": f"no reply within {timeout:g}s"})
    elif reply.error is not None:
        if reply.error.code == "forbidden":
            raise AuthError(reply.error.message)
        missing.append({"pid": pid, "reason": reply.error.message, "code": reply.error.code})
    else:
        results.append(reply.result or {})


def ask_all_through(client: Client, cmd: str, args: dict[str, Any],
                    timeout: float) -> dict[str, Any]:
    """``cmd`` in every process of the service behind ``client``'s door."""
    members = client.request("ps").get("agents", [])
    # The door's own request last: it serves that one in its own thread (a CPU sample
    # sleeps there), after relaying the others, which then run meanwhile.
    pids = [int(m["pid"]) for m in sorted(members, key=lambda m: m.get("role") == "door")
            if isinstance(m.get("pid"), int)]
    sent = {client.send_request(cmd, args, pid=pid): pid for pid in pids}
    replies = client.gather(set(sent), timeout)
    results: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for rid, pid in sent.items():
        _outcome(pid, replies.get(rid), timeout, results, missing)
    roles = {int(m["pid"]): m for m in members if isinstance(m.get("pid"), int)}
    for result in results:  # who is who, as the door knows it
        member = roles.get(result.get("pid", -1), {})
        result.setdefault("role", member.get("role"))
        result.setdefault("ppid", member.get("ppid"))
    return {"processes": _ordered(results), "missing": missing}


def ask_all_local(cmd: str, args: dict[str, Any], timeout: float,
                  credentials: Credentials | None = None) -> dict[str, Any]:
    """``cmd`` in every agent of this user on this host (through their ipc sockets)."""
    entries = list(registry.list_entries())
    clients: dict[int, Client] = {}
    results: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    try:
        sent: dict[zmq.Socket[bytes], tuple[Client, str, int]] = {}
        for entry in entries:
            pid = int(entry["pid"])
            try:
                client = clients[pid] = Client(str(entry["endpoint"]), credentials,
                                               timeout=timeout)
                sent[client.socket] = (client, client.send_request(cmd, args), pid)
            except ProdbugError as exc:
                missing.append({"pid": pid, "reason": str(exc)})
        poller = zmq.Poller()
        for sock in sent:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        waiting = dict(sent)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(int(left * 1000) + 1):
                client, rid, pid = waiting[sock]
                found = client.gather({rid}, 0)
                if rid in found:
                    del waiting[sock]
                    poller.unregister(sock)
                    _outcome(pid, found[rid], timeout, results, missing)
        for _client, _rid, pid in waiting.values():
            _outcome(pid, None, timeout, results, missing)
    finally:
        for client in clients.values():
            client.close()
    return {"processes": _ordered(results), "missing": missing}


def _ordered(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: (r.get("role") != "door", r.get("pid", 0)))
