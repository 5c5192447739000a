"""``prodbug snapshot`` and ``prodbug logpoint``: look at a line of a live service without
stopping it (debugger role).

Both open a probe session in the agent (prodbug/agent/probes.py) and keep it alive (a ping
four times per heartbeat, at most a second apart): a snapshot prints the stack and locals
of each of its ``--count`` hits, like ``prodbug stacks --locals``, then ends; a logpoint
prints a formatted line per hit, at most ``--rate`` per second, until it expires. Ctrl-C
(or SIGTERM) closes the session: the probe is disarmed at once; if this command dies
without a word, the agent disarms it when the heartbeats stop.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from prodbug import protocol
from prodbug.cli import connection_args
from prodbug.client import Client
from prodbug.errors import AuthError, ConfigError, RemoteError, TargetUnreachable
from prodbug.textsafe import printable

__all__ = ["configure_parser", "main", "parse_duration", "parse_rate", "render_snapshot"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``10m``, ``30s``, ``1h``, ``1.5m`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", text)
    if match is None:
        raise ConfigError(f'"{text}" is not a duration (e.g. 30s, 10m, 1h)')
    return float(match[1]) * _UNITS[match[2]]


def parse_rate(text: str) -> float:
    """``50/s``, ``50`` (per second) or ``600/m``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*", text)
    if match is None or float(match[1]) <= 0:
        raise ConfigError(f'"{text}" is not a rate (e.g. 50/s)')
    return float(match[1]) / _UNITS[match[2] or "s"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    logpoint = parser.prog.split()[-1] == "logpoint"
    connection_args(parser)
    parser.add_argument("where", metavar="FILE:LINE",
                        help="the line, as the service sees its file (a path or its end: "
                             "app/views.py:88)")
    if logpoint:
        parser.add_argument("template", metavar="TEMPLATE",
                            help='the line to print, with expressions in braces: "user '
                                 '{user.name} items {len_items}" (names, attributes from '
                                 "__dict__, subscripts of dicts/lists/tuples/strings; no "
                                 "calls)")
    else:
        parser.add_argument("--condition", metavar="EXPR",
                            help="only hits where EXPR is true (the same read-only language, "
                                 "plus comparisons of plain values and and/or/not)")
        parser.add_argument("--count", type=int, default=1, metavar="N",
                            help="how many hits to capture, 1 to 100 (default: %(default)s)")
        parser.add_argument("--locals", type=int, default=3, metavar="N",
                            help="innermost frames whose locals are shown, 0 to 5 "
                                 "(default: %(default)s)")
    parser.add_argument("--expire", default="10m", metavar="DURATION",
                        help="disarm after this long (30s, 10m, 1h; at most 1h; "
                             "default: %(default)s)")
    parser.add_argument("--rate", default="50/s", metavar="N/s",
                        help="at most this many hits per second look at the frame; the "
                             "others are counted and passed by (default: %(default)s)")
    parser.add_argument("--no-redact", action="store_true",
                        help="show values whose names look secret (passwords, tokens) "
                             "instead of ***")


def _open_args(args: argparse.Namespace) -> dict[str, Any]:
    where, _, line = args.where.rpartition(":")
    if not where or not line.isdigit() or int(line) < 1:
        raise ConfigError(f'"{args.where}" is not FILE:LINE (e.g. app/views.py:88)')
    expire = parse_duration(args.expire)
    if not 0.1 <= expire <= 3600:
        raise ConfigError("--expire must be from 0.1s to 1h")
    rate = parse_rate(args.rate)
    if not 0.1 <= rate <= 1000:
        raise ConfigError("--rate must be from 0.1/s to 1000/s")
    out: dict[str, Any] = {"kind": args.command, "file": where, "line": int(line),
                           "expire": expire, "rate": rate}
    if args.no_redact:
        out["redact"] = False
    if args.command == "logpoint":
        out["template"] = args.template
    else:
        if not 1 <= args.count <= 100:
            raise ConfigError("--count must be from 1 to 100")
        if not 0 <= args.locals <= 5:
            raise ConfigError("--locals must be from 0 to 5")
        out["count"] = args.count
        out["locals"] = args.locals
        if args.condition:
            out["condition"] = args.condition
    return out


def main(args: argparse.Namespace) -> int:
    open_args = _open_args(args)
    import secrets

    from prodbug.cli import _keys, _style
    from prodbug.connect import connect

    with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args),
                 routing_id=b"probe-" + secrets.token_bytes(8)) as conn:
        run = _Run(conn.client, args, _style(args))
        return run.go(open_args)


class _Run:
    """One probe session followed to its end."""

    def __init__(self, client: Client, args: argparse.Namespace, style: Any) -> None:
        self.client = client
        self.args = args
        self.style = style
        self.session = ""
        self.snapshots: list[dict[str, Any]] = []
        self.counts: dict[str, Any] = {}
        self.reason = ""
        self.interrupted = False

    def go(self, open_args: dict[str, Any]) -> int:
        opened = self.client.request("probe.open", open_args)
        self.session = str(opened["session"])
        heartbeat = float(opened.get("heartbeat", 5))
        expire = float(opened.get("expires_at", 0)) - time.time()
        functions = ", ".join(printable(f) for f in opened.get("functions", []))
        print(f"prodbug: {self.args.command} armed at {printable(self.args.where)} "
              f"({functions}; {printable(opened.get('mechanism', '?'))}, reaches "
              f"{printable(opened.get('reach', '?'))}); disarmed in {max(expire, 0):.0f}s "
              f"or on Ctrl-C", file=sys.stderr)
        try:
            self._follow(heartbeat)
        except KeyboardInterrupt:
            self.interrupted = True
            self.client.send_request("session.close", {"session": self.session})
            self._drain()
        return self._finish()

    def _follow(self, heartbeat: float) -> None:
        ping_every = min(1.0, heartbeat / 4)
        lost_after = max(2 * heartbeat, 10.0)
        last_ping = 0.0
        last_heard = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_ping >= ping_every:
                self.client.send_request("session.ping", {"session": self.session})
                last_ping = now
            message = self.client.poll_message(0.1)
            if message is None:
                if time.monotonic() - last_heard > lost_after:
                    raise TargetUnreachable(
                        f"lost the agent: no answer for {lost_after:g}s; it disarms the "
                        f"probe by itself when this command's heartbeats stop")
                continue
            last_heard = time.monotonic()
            if self._take(message):
                return

    def _drain(self) -> None:
        """After Ctrl-C: the session's last events and its end (up to 5 s)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                message = self.client.poll_message(0.2)
                if message is not None and self._take(message):
                    return
            except KeyboardInterrupt:
                continue
        self.reason = "the agent did not confirm the end within 5s (it disarms the probe " \
                      "when the heartbeats stop)"

    def _take(self, message: protocol.Reply | protocol.Event) -> bool:
        """Handle one message; True once the session has ended."""
        if isinstance(message, protocol.Reply):
            if message.error is None:
                return False
            if message.error.code == "not_found" or (
                    message.error.code == "forbidden" and not message.id):
                self.reason = self.reason or f"the session is gone: {message.error.message}"
                if message.error.code == "forbidden":
                    raise AuthError(message.error.message)
                return True
            raise RemoteError(message.error.message, message.error.code)
        kind, data = message.kind, message.data
        if kind == "snapshot":
            self.snapshots.append(data)
            if not self.args.json:
                sys.stdout.write(render_snapshot(data, self.style))
                sys.stdout.flush()
        elif kind == "line":
            if self.args.json:
                print(json.dumps(data), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(float(data.get("at", 0))))
                thread = (data.get("thread") or {}).get("name") or "?"
                print(f"{self.style.dim(stamp + ' ' + printable(thread))} "
                      f"{printable(data.get('text', ''))}", flush=True)
        elif kind == "warning":
            print(f"prodbug: {printable(data.get('text', ''))}", file=sys.stderr)
        elif kind == "probe_end":
            self.counts = dict(data)
        elif kind == "state" and data.get("state") == "ended":
            self.reason = str(data.get("reason", ""))
            return True
        return False

    def _finish(self) -> int:
        counts = self.counts
        if self.args.json and self.args.command == "snapshot":
            print(json.dumps({"snapshots": self.snapshots, "ended": self.reason, **counts},
                             indent=2))
        elif self.args.json:
            print(json.dumps({"ended": self.reason, **counts}), flush=True)
        if self.interrupted:
            print("\nprodbug: Ctrl-C: the probe is disarmed", file=sys.stderr)
        stats = ""
        if counts:
            stats = (f" ({counts.get('hits', 0)} hits looked at; the rate limit turned "
                     f"{'others' if counts.get('dropped') else 'none'} away)")
        print(f"prodbug: session ended: {printable(self.reason)}{stats}", file=sys.stderr)
        if self.interrupted:
            return 130
        if self.args.command == "snapshot" and not self.snapshots:
            print(f"prodbug: no thread reached {printable(self.args.where)}", file=sys.stderr)
            return 1
        return 0


def render_snapshot(snapshot: dict[str, Any], style: Any) -> str:
    """One snapshot as ``prodbug stacks --locals`` shows a thread."""
    from prodbug.render import _frames
    from prodbug.textsafe import printable_tree

    snapshot = printable_tree(snapshot)
    thread = snapshot.get("thread") or {}
    stamp = time.strftime("%H:%M:%S", time.localtime(float(snapshot.get("at", 0))))
    lines = [style.bold(f"snapshot {snapshot.get('number', '?')}/{snapshot.get('count', '?')}"
                        f" at {stamp}, thread '{thread.get('name') or '?'}' "
                        f"({thread.get('ident')})")]
    _frames(lines, list(snapshot.get("frames", [])), style, "  ")
    if snapshot.get("truncated"):
        lines.append(style.dim("  ... (outer frames not shown)"))
    if snapshot.get("locals_truncated"):
        lines.append(style.dim("  (this snapshot's budget for locals is spent: some are "
                               "not shown)"))
    return "\n".join(lines) + "\n\n"
