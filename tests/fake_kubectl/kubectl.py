"""A stand-in ``kubectl`` for tests: ``port-forward`` (really forwards) and ``get pods``.

The cluster is a JSON file named by $FAKE_KUBECTL_CLUSTER::

    {"pods": [{"namespace": "default", "name": "api-0", "labels": {"app": "api"},
               "phase": "Running", "ports": {"7661": 40123}}],
     "unreachable": false}

A pod's ``ports`` map a port in the pod to a port on 127.0.0.1 where something (a real
agent) listens. Each run records its pid in $FAKE_KUBECTL_PIDS (a directory), so a test
can check that none outlives prodbug. Messages and exit codes are kubectl's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

CONTEXT_NAMESPACE = "default"


def _cluster() -> dict[str, Any]:
    path = os.environ.get("FAKE_KUBECTL_CLUSTER")
    if not path:
        return {"pods": []}
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def _fail(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)


def _klog(message: str) -> str:
    now = time.time()
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now))
    return f"E{stamp}.{int(now % 1 * 1e6):06d}   {os.getpid():5d} portforward.go:413] {message}"


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """kubectl's flags we meet (--flag VALUE, --flag=VALUE, -n NS, -l SEL) and the rest."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    aliases = {"-n": "namespace", "-l": "selector", "-o": "output"}
    it = iter(argv)
    for arg in it:
        if arg in aliases:
            flags[aliases[arg]] = next(it)
        elif arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            flags[name] = value
        elif arg.startswith("--"):
            flags[arg[2:]] = next(it)
        else:
            rest.append(arg)
    return flags, rest


def _matches(labels: dict[str, str], selector: str) -> bool:
    for raw in selector.split(","):
        term = raw.strip()
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def get_pods(flags: dict[str, str]) -> None:
    namespace = flags.get("namespace", CONTEXT_NAMESPACE)
    selector = flags.get("selector", "")
    items = [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": p["name"], "namespace": p["namespace"],
                           "labels": p.get("labels", {})},
              "status": {"phase": p.get("phase", "Running")}}
             for p in _cluster()["pods"]
             if p["namespace"] == namespace and _matches(p.get("labels", {}), selector)]
    print(json.dumps({"apiVersion": "v1", "items": items, "kind": "List",
                      "metadata": {"resourceVersion": ""}}, indent=4))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                s.shutdown(how)


def _serve(conn: socket.socket, local: int, remote: int, pod: dict[str, Any]) -> None:
    print(f"Handling connection for {local}", flush=True)
    target = pod.get("ports", {}).get(str(remote))
    try:
        if target is None:
            raise ConnectionRefusedError
        upstream = socket.create_connection(("127.0.0.1", int(target)))
    except OSError:
        sys.stderr.write(_klog(
            f"an error occurred forwarding {local} -> {remote}: error forwarding port "
            f"{remote} to pod {pod['name']}, uid : failed to execute portforward in network "
            f'namespace "/var/run/netns/cni-fake": failed to connect to localhost:{remote} '
            f'inside namespace "{pod["name"]}", IPv4: dial tcp4 127.0.0.1:{remote}: connect: '
            f"connection refused IPv6 dial tcp6 [::1]:{remote}: connect: connection refused "
            ) + "\n")
        sys.stderr.flush()
        conn.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
    back.start()
    _pipe(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def port_forward(flags: dict[str, str], args: list[str]) -> None:
    namespace = flags.get("namespace", CONTEXT_NAMESPACE)
    if len(args) != 2:
        _fail("error: TYPE/NAME and list of ports are required for port-forward\n"
              "See 'kubectl port-forward -h' for help and examples")
    resource, ports = args
    kind, _, name = resource.rpartition("/")
    if kind not in ("", "pod", "pods", "po"):
        _fail(f'error: the server doesn\'t have a resource type "{kind}"')
    pod = next((p for p in _cluster()["pods"]
                if p["namespace"] == namespace and p["name"] == name), None)
    if pod is None:
        _fail(f'Error from server (NotFound): pods "{name}" not found')
    assert pod is not None
    if pod.get("phase", "Running") != "Running":
        _fail(f"error: unable to forward port because pod is not running. Current "
              f"status={pod['phase']}")
    local_text, _, remote_text = ports.rpartition(":")
    remote = int(remote_text)
    listener = socket.socket()
    listener.bind((flags.get("address", "127.0.0.1"), int(local_text or 0)))
    listener.listen(16)
    local = listener.getsockname()[1]
    print(f"Forwarding from 127.0.0.1:{local} -> {remote}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, local, remote, pod), daemon=True).start()


def main() -> None:
    # kubectl stops forwarding at once on Ctrl-C (SIGINT): no connection outlives it.
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    pids = os.environ.get("FAKE_KUBECTL_PIDS")
    if pids:
        Path(pids, str(os.getpid())).write_text(" ".join(sys.argv[1:]))
    flags, args = _parse(sys.argv[1:])
    cluster = _cluster()
    if cluster.get("unreachable"):
        _fail("The connection to the server localhost:8080 was refused - did you specify the "
              "right host or port?")
    if args[:1] == ["port-forward"]:
        port_forward(flags, args[1:])
    elif args[:2] == ["get", "pods"]:
        get_pods(flags)
    else:
        _fail(f"fake kubectl: {' '.join(sys.argv[1:])} is not implemented")


if __name__ == "__main__":
    main()
