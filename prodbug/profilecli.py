"""``prodbug profile``: sample a live process's stacks for N seconds (observer role).

The agent's sampler (prodbug/agent/profiler.py) runs in the service while this command
keeps its session alive (a ping four times per heartbeat, at most a second apart); when
the time is up the agent sends the counts once and ends the session. Ctrl-C closes the
session at once (the sampler stops) and shows what was sampled so far. With ``--all``
every process behind a door is profiled at the same time and the results merged.

Output: the top functions by self and total samples and the hottest stack (default),
collapsed stacks (``--collapsed``, what flamegraph.pl and speedscope read), speedscope's
JSON (``--speedscope FILE``), an SVG flame graph (``--svg FILE``), or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from prodbug import __version__, protocol
from prodbug.cli import connection_args
from prodbug.client import Client
from prodbug.errors import (
    AuthError,
    ConfigError,
    RemoteError,
    TargetUnreachable,
)
from prodbug.textsafe import printable

__all__ = ["collapsed_lines", "configure_parser", "main", "merge", "speedscope", "top"]

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    connection_args(parser)
    parser.add_argument("--seconds", type=float, required=True, metavar="N",
                        help="how long to sample (0.1 to 300)")
    parser.add_argument("--rate", type=float, default=100.0, metavar="HZ",
                        help="samples per second (1 to 1000; default: %(default)g)")
    parser.add_argument("--all", action="store_true",
                        help="every process of the service behind TARGET (a door), at once, "
                             "merged")
    parser.add_argument("--thread", action="append", metavar="NAME",
                        help="only this thread (name, ident or native id; repeatable); "
                             "'all' takes prodbug's own threads too (default: every thread "
                             "but prodbug's)")
    parser.add_argument("--idle", action="store_true",
                        help="count threads that are waiting (sleep, I/O, a lock) too; by "
                             "default a sample of a thread that used no CPU since the "
                             "previous one is left out")
    parser.add_argument("--collapsed", action="store_true",
                        help='print collapsed stacks ("root;...;leaf COUNT" lines, as '
                             "flamegraph.pl and speedscope read them)")
    parser.add_argument("--speedscope", metavar="FILE", type=Path,
                        help="write speedscope's JSON format (one profile per thread)")
    parser.add_argument("--svg", metavar="FILE", type=Path,
                        help="write an SVG flame graph (opens in any browser)")


# -- the sessions ------------------------------------------------------------------------

@dataclass
class _Link:
    """One process's profile session, as this command follows it."""

    pid: int | None
    session: str
    heartbeat: float
    result: dict[str, Any] | None = None
    reason: str | None = None  # set once it ended
    closing: bool = False


@dataclass
class _Run:
    client: Client
    links: dict[str, _Link] = field(default_factory=dict)
    missing: list[dict[str, Any]] = field(default_factory=list)
    pings: dict[str, str] = field(default_factory=dict)  # request id -> session
    interrupted: bool = False

    def open(self, links: list[_Link]) -> None:
        for link in links:
            self.links[link.session] = link

    def live(self) -> list[_Link]:
        return [link for link in self.links.values() if link.reason is None]

    def send(self, link: _Link, cmd: str) -> None:
        rid = self.client.send_request(cmd, {"session": link.session}, pid=link.pid)
        if cmd == "session.ping":
            self.pings[rid] = link.session

    def close_all(self) -> None:
        for link in self.live():
            if not link.closing:
                link.closing = True
                self.send(link, "session.close")

    def follow(self, seconds: float) -> None:
        """Keep every session alive until each has ended (or the agent is lost)."""
        heartbeat = min(link.heartbeat for link in self.links.values())
        ping_every = min(1.0, heartbeat / 4)
        lost_after = max(2 * heartbeat, 10.0)
        give_up = time.monotonic() + seconds + lost_after + 5
        last_ping = 0.0
        last_heard = time.monotonic()
        closed_at: float | None = None
        while self.live():
            now = time.monotonic()
            if self.interrupted and closed_at is None:
                closed_at = now
                self.close_all()
            if now - last_ping >= ping_every:
                for link in self.live():
                    self.send(link, "session.ping")
                last_ping = now
            message = self.client.poll_message(0.1)
            if message is None:
                if time.monotonic() - last_heard > lost_after or time.monotonic() > give_up \
                        or (closed_at is not None and time.monotonic() - closed_at > 5):
                    self._lose(f"no end from the agent within {lost_after:g}s")
                    return
                continue
            last_heard = time.monotonic()
            self._take(message)

    def _take(self, message: protocol.Reply | protocol.Event) -> None:
        if isinstance(message, protocol.Event):
            link = self.links.get(message.session)
            if link is None:
                return
            if message.kind == "profile":
                link.result = dict(message.data)
            elif message.kind == "state" and message.data.get("state") == "ended":
                link.reason = str(message.data.get("reason", ""))
            return
        session = self.pings.pop(message.id, None)
        if message.error is None:
            return
        if message.error.code == "forbidden":
            raise AuthError(message.error.message)
        link = self.links.get(session or "")
        if link is not None and message.error.code == "not_found" and link.reason is None:
            link.reason = "the session is gone (the agent ended it)"

    def _lose(self, why: str) -> None:
        for link in self.live():
            link.reason = f"lost: {why}"
            self.missing.append({"pid": link.pid, "reason": link.reason})


def _open_one(client: Client, open_args: dict[str, Any]) -> _Link:
    opened = client.request("profile.open", open_args)
    # pid None: the requests go where the client's go (the agent itself, or the member a
    # door relays to with --pid).
    return _Link(None, str(opened["session"]), float(opened.get("heartbeat", 5)))


def _open_all(client: Client, open_args: dict[str, Any], timeout: float,
              missing: list[dict[str, Any]]) -> list[_Link]:
    """A session in every process behind the door (the door relays each request and
    the session's events back on this link)."""
    members = client.request("ps").get("agents", [])
    pids = [int(m["pid"]) for m in members if isinstance(m.get("pid"), int)]
    sent = {client.send_request("profile.open", open_args, pid=pid): pid for pid in pids}
    replies = client.gather(set(sent), timeout)
    links = []
    for rid, pid in sent.items():
        reply = replies.get(rid)
        if reply is None:
            missing.append({"pid": pid, "reason": f"no reply within {timeout:g}s"})
        elif reply.error is not None:
            if reply.error.code == "forbidden":
                raise AuthError(reply.error.message)
            missing.append({"pid": pid, "reason": reply.error.message})
        else:
            result = reply.result or {}
            links.append(_Link(pid, str(result["session"]),
                               float(result.get("heartbeat", 5))))
    return links


# -- what the profiles say --------------------------------------------------------------

def merge(results: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Every process's merged stacks summed: (collapsed stack, samples), most first."""
    total: dict[str, int] = {}
    for result in results:
        for entry in result.get("merged", []):
            stack, count = str(entry.get("stack", "")), int(entry.get("count", 0))
            total[stack] = total.get(stack, 0) + count
    return sorted(total.items(), key=lambda item: (-item[1], item[0]))


def collapsed_lines(stacks: list[tuple[str, int]]) -> list[str]:
    """Brendan Gregg's collapsed format: "root;...;leaf COUNT"."""
    return [f"{printable(stack)} {count}" for stack, count in stacks]


def _function(frame: str) -> str:
    """ "file:function" of a "file:function:line" frame (markers such as "(other)" stay)."""
    head, _, line = frame.rpartition(":")
    return head if head and line.isdigit() else frame


def top(stacks: list[tuple[str, int]], limit: int = 10) -> list[dict[str, Any]]:
    """The functions most sampled by themselves (self) and with their callees (total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    for stack, count in stacks:
        frames = [_function(frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for function in set(frames):
            total[function] = total.get(function, 0) + count
    ranked = sorted(total, key=lambda f: (-own.get(f, 0), -total[f], f))[:limit]
    return [{"function": f, "self": own.get(f, 0), "total": total[f]} for f in ranked]


def speedscope(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """speedscope's file format: one sampled profile per thread of each process."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}

    def frame_index(frame: str) -> int:
        found = index.get(frame)
        if found is None:
            path, function, line = [*frame.rsplit(":", 2), "", ""][:3]
            entry: dict[str, Any] = {"name": frame}
            if line.isdigit() and function:
                entry = {"name": function, "file": path, "line": int(line)}
            found = index[frame] = len(frames)
            frames.append(entry)
        return found

    profiles = []
    for result in results:
        for thread in result.get("threads", []):
            samples = [[frame_index(f) for f in str(s["stack"]).split(";")]
                       for s in thread.get("stacks", [])]
            weights = [int(s["count"]) for s in thread.get("stacks", [])]
            profiles.append({
                "type": "sampled", "name": f"pid {result.get('pid')} {thread.get('name')}",
                "unit": "none", "startValue": 0, "endValue": sum(weights),
                "samples": samples, "weights": weights})
    return {"$schema": SPEEDSCOPE_SCHEMA, "shared": {"frames": frames},
            "profiles": profiles, "name": name, "activeProfileIndex": 0,
            "exporter": f"prodbug {__version__}"}


def _summary(results: list[dict[str, Any]], stacks: list[tuple[str, int]]) -> str:
    out = []
    for result in results:
        threads = result.get("threads", [])
        out.append(f"pid {printable(result.get('pid'))} (Python "
                   f"{printable(result.get('python', '?'))}): {result.get('samples', 0)} "
                   f"samples in {float(result.get('duration', 0)):.2f}s "
                   f"({float(result.get('achieved_rate', 0)):g} Hz of "
                   f"{float(result.get('rate', 0)):g}; the sampler used "
                   f"{1000 * float(result.get('sampler_cpu', 0)):.0f} ms of CPU), "
                   f"{len(threads)} thread"
                   f"{'' if len(threads) == 1 else 's'}: "
                   + ", ".join(f"{printable(t.get('name'))} ({t.get('samples', 0)}"
                               + (f", {t['idle']} idle)" if t.get("idle") else ")")
                               for t in threads))
    grand = sum(count for _, count in stacks)
    if not grand:
        out.append("no samples (no thread ran Python code that was sampled)")
        return "\n".join(out) + "\n"
    out.append("")
    out.append(f"{'SELF%':>6} {'TOTAL%':>7} {'SELF':>6} {'TOTAL':>6}  FUNCTION")
    for row in top(stacks):
        head, _, function = row["function"].rpartition(":")
        where = f"{function}  {head}" if head else function
        out.append(f"{100 * row['self'] / grand:5.1f}% {100 * row['total'] / grand:6.1f}% "
                   f"{row['self']:>6} {row['total']:>6}  {printable(where)}")
    stack, count = stacks[0]
    out.append("")
    out.append(f"hottest stack ({count} samples, {100 * count / grand:.1f}%), innermost "
               f"last:")
    out.extend(f"  {printable(frame)}" for frame in stack.split(";"))
    return "\n".join(out) + "\n"


# -- the command -------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    if not 0.1 <= args.seconds <= 300:
        raise ConfigError("--seconds must be from 0.1 to 300")
    if not 1 <= args.rate <= 1000:
        raise ConfigError("--rate must be from 1 to 1000 (Hz)")
    if args.all and args.pid is not None:
        raise ConfigError("--all profiles every process: leave out --pid")
    if args.all and not args.target:
        raise ConfigError("--all needs a TARGET (the service's door)")
    open_args: dict[str, Any] = {"seconds": args.seconds, "rate": args.rate}
    if args.idle:
        open_args["idle"] = True
    if args.thread:
        open_args["threads"] = "all" if args.thread == ["all"] else list(args.thread)
    import secrets

    from prodbug.cli import _keys
    from prodbug.connect import connect

    with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args),
                 routing_id=b"prof-" + secrets.token_bytes(8)) as conn:
        run = _Run(conn.client)
        links = (_open_all(conn.client, open_args, conn.timeout, run.missing) if args.all
                 else [_open_one(conn.client, open_args)])
        if not links:
            raise TargetUnreachable("no process could be profiled: " + "; ".join(
                f"pid {m['pid']}: {m['reason']}" for m in run.missing))
        run.open(links)
        label = conn.label
        print(f"prodbug: profiling {len(links)} process{'es' if len(links) > 1 else ''} "
              f"for {args.seconds:g}s at {args.rate:g} Hz (Ctrl-C stops early)",
              file=sys.stderr)

        def interrupt(signum: int, frame: FrameType | None) -> None:
            run.interrupted = True

        previous = {sig: signal.signal(sig, interrupt)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            run.follow(args.seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return _report(args, run, label)


def _report(args: argparse.Namespace, run: _Run, label: str) -> int:
    links = list(run.links.values())
    results = [link.result for link in links if link.result is not None]
    for link in links:
        if link.result is None and link.reason and not link.reason.startswith("lost"):
            run.missing.append({"pid": link.pid, "reason": link.reason})
    for missing in run.missing:
        print(f"prodbug: pid {printable(missing['pid'])}: no profile: "
              f"{printable(missing['reason'])}", file=sys.stderr)
    if not results:
        reasons = "; ".join(str(m["reason"]) for m in run.missing) or "no profile came back"
        if run.interrupted:
            print("prodbug: interrupted before any sample came back", file=sys.stderr)
            return 130
        if any(str(m["reason"]).startswith("lost") for m in run.missing):
            raise TargetUnreachable(reasons)
        raise RemoteError(reasons, "no_profile")
    stacks = merge(results)
    if run.interrupted:
        print(f"prodbug: stopped early (Ctrl-C): what was sampled until then, "
              f"{sum(int(r.get('samples', 0)) for r in results)} samples", file=sys.stderr)
    try:
        if args.speedscope:
            args.speedscope.write_text(json.dumps(speedscope(results, f"prodbug profile "
                                                                       f"{label}")))
            print(f"prodbug: wrote {args.speedscope} (open it at https://www.speedscope.app)",
                  file=sys.stderr)
        if args.svg:
            from prodbug.flame import render_svg

            grand = sum(count for _, count in stacks)
            pids = ", ".join(str(r.get("pid")) for r in results)
            args.svg.write_text(render_svg(
                stacks, title=f"prodbug profile {label}",
                subtitle=f"pid {pids}: {grand} samples at {args.rate:g} Hz over "
                         f"{args.seconds:g}s"))
            print(f"prodbug: wrote {args.svg}", file=sys.stderr)
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}") from None
    if args.json:
        body: dict[str, Any] = (results[0] if len(results) == 1 and not args.all else
                                {"processes": results, "missing": run.missing,
                                 "merged": [{"stack": s, "count": c} for s, c in stacks]})
        print(json.dumps(body, indent=2))
    elif args.collapsed:
        sys.stdout.write("".join(line + "\n" for line in collapsed_lines(stacks)))
    else:
        sys.stdout.write(_summary(results, stacks))
    return 130 if run.interrupted else 0
