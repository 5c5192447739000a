"""After a fork, in the child: let go of the parent agent's TCP port.

A forked child inherits every descriptor of its parent, the agent's TCP listener and the
connections it accepted among them. Nothing in the child serves them (the zmq I/O thread
does not survive a fork), yet they keep the port open: once the parent dies, clients
connect to a port that accepts and never answers, and no new agent can bind it. The child
puts /dev/null over exactly those descriptors (``dup2``: the number stays taken, so the
orphaned zmq state that still names it never closes something else) and leaves every
other one, the host's own sockets included, alone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat

__all__ = ["release_inherited_port"]

_log = logging.getLogger("prodbug.agent")


def _parse(endpoint: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, int]:
    """``tcp://HOST:PORT`` (as zmq's LAST_ENDPOINT spells it) -> address (None: any), port."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    address = ipaddress.ip_address(host.strip("[]"))
    return (None if address.is_unspecified else _plain(address)), int(port)


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address
           ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return mapped if mapped is not None else address


def _tcp_local_address(fd: int) -> tuple[str, int] | None:
    # socket(fileno=) neither dups nor closes; detach() hands the descriptor back untouched.
    sock = socket.socket(fileno=fd)
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
            return None
        name = sock.getsockname()
        return str(name[0]), int(name[1])
    finally:
        sock.detach()


def _inherited(endpoint: str, fd_dir: str) -> list[int]:
    wanted_address, port = _parse(endpoint)
    found = []
    for name in os.listdir(fd_dir):  # bounded by the process's own RLIMIT_NOFILE
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            local = _tcp_local_address(fd)
        except (OSError, ValueError):
            continue  # closed meanwhile (the listing's own fd), or not ours to read
        if local is None or local[1] != port:
            continue
        address = _plain(ipaddress.ip_address(local[0].split("%")[0]))  # fe80::1%eth0
        if wanted_address is None or address == wanted_address:
            found.append(fd)
    return found


def release_inherited_port(endpoint: str, fd_dir: str = "/proc/self/fd") -> list[int]:
    """Put /dev/null over this process's TCP sockets bound locally to ``endpoint``.

    For a forked child only: the listener and connections it finds are its parent's.
    Returns the descriptors it replaced; never raises.
    """
    try:
        # Wrapping a descriptor in a socket object makes it non-blocking when a default
        # timeout is set, and O_NONBLOCK lives in the description the parent shares. A
        # forked child runs one thread, so switching the default off here is not a race.
        default = socket.getdefaulttimeout()
        socket.setdefaulttimeout(None)
        try:
            fds = _inherited(endpoint, fd_dir)
        finally:
            socket.setdefaulttimeout(default)
        if not fds:
            return []
        null = os.open(os.devnull, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            for fd in fds:
                os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)
        return fds
    except Exception:  # a fork must never fail because of us
        _log.debug("could not release the parent's TCP port %s", endpoint, exc_info=True)
        return []
