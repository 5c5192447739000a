"""``prodbug memory``: RSS and its trend, the collector, the top object types, and with
``--trace SECONDS`` the allocation sites that grew (tracemalloc, stopped afterwards)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from prodbug.cli import connection_args
from prodbug.errors import ConfigError, RemoteError, TargetUnreachable
from prodbug.textsafe import printable

__all__ = ["configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    connection_args(parser)
    parser.add_argument("--deep", action="store_true",
                        help="count every object (a full walk of the heap: slower, more of "
                             "the host's time); by default at most 200,000 containers and "
                             "200,000 objects below them are looked at")
    parser.add_argument("--trace", type=float, metavar="SECONDS",
                        help="also run tracemalloc this long (0.1-120) and show the "
                             "allocation sites that grew; it is stopped afterwards")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="rows per table (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=1, metavar="N",
                        help="with --trace: frames per allocation site (1-10, default 1)")


def main(args: argparse.Namespace) -> int:
    if args.trace is not None and not 0.1 <= args.trace <= 120:
        raise ConfigError("--trace must be from 0.1 to 120 seconds")
    if not 1 <= args.top <= 200:
        raise ConfigError("--top must be from 1 to 200")
    if not 1 <= args.frames <= 10:
        raise ConfigError("--frames must be from 1 to 10")
    from prodbug.cli import request

    if args.deep:  # the agent works up to 5 s on it, pausing as long between slices
        args.timeout = max(args.timeout, 60.0)
    report = request(args, "memory", {"deep": args.deep, "top": args.top})
    traced: dict[str, Any] | None = None
    if args.trace is not None:
        if not args.json:
            sys.stdout.write(render_memory(report))
            sys.stdout.flush()
            print(f"prodbug memory: tracing allocations for {args.trace:g}s...",
                  file=sys.stderr)
        traced = _trace(args)
    if args.json:
        out = dict(report)
        if traced is not None:
            out["trace"] = traced
        print(json.dumps(out, indent=2))  # ASCII: escapes are JSON's own
    elif traced is None:
        sys.stdout.write(render_memory(report))
    else:
        sys.stdout.write(render_trace(traced))
    return 0


def _trace(args: argparse.Namespace) -> dict[str, Any]:
    """Open a memory session, keep it alive until its one event and its end."""
    from prodbug import protocol
    from prodbug.cli import _keys
    from prodbug.connect import connect

    with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args)) as conn:
        client = conn.client
        opened = client.request("memory.open", {"trace": args.trace, "top": args.top,
                                                "frames": args.frames})
        session = str(opened["session"])
        heartbeat = float(opened.get("heartbeat", 5))
        ping_every = min(1.0, heartbeat / 4)
        lost_after = max(2 * heartbeat, 10.0) + args.trace
        result: dict[str, Any] | None = None
        last_ping = last_heard = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now - last_ping >= ping_every:
                    client.send_request("session.ping", {"session": session})
                    last_ping = now
                message = client.poll_message(0.1)
                if message is None:
                    if time.monotonic() - last_heard > lost_after:
                        raise TargetUnreachable(f"no answer from the agent for "
                                                f"{lost_after:g}s; it stops tracemalloc by "
                                                f"itself when this command's heartbeats stop")
                    continue
                last_heard = time.monotonic()
                if isinstance(message, protocol.Event):
                    if message.kind == "memory":
                        result = dict(message.data)
                    elif message.kind == "state" and message.data.get("state") == "ended":
                        if result is None:
                            raise RemoteError(f"the trace ended without a result: "
                                              f"{message.data.get('reason', '')}", "ended")
                        return result
                elif message.error is not None and message.error.code == "not_found":
                    raise RemoteError("the trace session is gone (the agent ended it)",
                                      "not_found")
        except KeyboardInterrupt:
            client.send_request("session.close", {"session": session})
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # its end, if it comes quickly
                message = client.poll_message(0.1)
                if isinstance(message, protocol.Event) and message.kind == "state":
                    break
            print("\nprodbug memory: Ctrl-C: trace stopped (tracemalloc too)", file=sys.stderr)
            raise


def _mib(value: Any) -> str:
    if type(value) is not int:
        return "?"
    return f"{value / (1 << 20):.1f} MiB"


def _size(value: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(value) >= 1 << shift:
            return f"{value / (1 << shift):.1f} {unit}"
    return f"{value} B"


def _signed(value: int) -> str:
    return ("+" if value >= 0 else "-") + _size(abs(value))


def render_memory(report: dict[str, Any]) -> str:
    """The one-shot report, for a terminal."""
    lines = [f"pid {report.get('pid')} (Python {printable(report.get('python', '?'))})"]
    lines.append(f"rss        {_mib(report.get('rss_bytes'))} (peak "
                 f"{_mib(report.get('peak_rss_bytes'))})")
    trend = report.get("trend") or {}
    if "bytes_per_min" in trend:
        lines.append(f"trend      {_signed(int(trend.get('bytes_change', 0)))} over "
                     f"{trend['span_s']:g}s ({trend['readings']} readings): "
                     f"{_signed(int(trend['bytes_per_min']))}/min")
    else:
        lines.append("trend      first reading (each memory request adds one)")
    gc_facts = report.get("gc") or {}
    gens = gc_facts.get("generations") or []
    lines.append(f"gc         {'enabled' if gc_facts.get('enabled') else 'DISABLED'}; counts "
                 f"{gc_facts.get('counts')} (thresholds {gc_facts.get('thresholds')}); "
                 f"gc.garbage {gc_facts.get('garbage')}")
    for number, gen in enumerate(gens):
        lines.append(f"  gen {number}    {gen.get('collections')} collections, "
                     f"{gen.get('collected')} collected, {gen.get('uncollectable')} "
                     f"uncollectable")
    tm = report.get("tracemalloc") or {}
    lines.append("tracemalloc " + (f"tracing ({_mib(tm.get('traced_bytes'))} traced)"
                                   if tm.get("tracing") else "not tracing"))
    objects = report.get("objects") or {}
    stride = int(objects.get("stride", 1))
    how = {"deep": "every object (--deep)",
           "full": "every tracked container",
           "sampled": f"1 in {stride} tracked containers; counts are estimates"}
    lines.append(f"objects    {objects.get('tracked')} tracked containers; looked at "
                 f"{how.get(str(objects.get('mode')), '?')}, and "
                 f"{objects.get('untracked_examined')} untracked objects below them, in "
                 f"{objects.get('elapsed_s')}s"
                 + ("" if objects.get("complete") else " (bounded: --deep to see all)"))
    for title, key in (("by count", "by_count"), ("by size", "by_size")):
        rows = objects.get(key) or []
        lines.append("")
        lines.append(f"top types {title}:")
        width = max([len(printable(r.get("type"))) for r in rows] + [4])
        lines.append(f"  {'type':<{width}}  {'count':>10}  {'size':>10}")
        for row in rows:
            lines.append(f"  {printable(row.get('type')):<{width}}  {row.get('count'):>10}  "
                         f"{_size(int(row.get('size', 0))):>10}")
    return "\n".join(lines) + "\n"


def render_trace(traced: dict[str, Any]) -> str:
    """The allocation sites that grew while tracing."""
    who = "the host's own tracemalloc (left running)" if traced.get("host_tracing") else \
        "tracemalloc (stopped afterwards)"
    lines = ["", f"allocation sites that grew over {traced.get('seconds'):g}s, by {who}:"]
    sites = traced.get("sites") or []
    if not sites:
        lines.append("  (none grew)")
    lines.append(f"  {'size diff':>10}  {'count diff':>10}  {'size':>10}  site")
    for site in sites:
        frames = site.get("frames") or [{}]
        first = frames[0]
        lines.append(f"  {_signed(int(site.get('size_diff', 0))):>10}  "
                     f"{int(site.get('count_diff', 0)):>+10}  "
                     f"{_size(int(site.get('size', 0))):>10}  "
                     f"{printable(first.get('filename'))}:{first.get('lineno')}")
        for frame in frames[1:]:
            lines.append(f"  {'':>10}  {'':>10}  {'':>10}    "
                         f"{printable(frame.get('filename'))}:{frame.get('lineno')}")
    return "\n".join(lines) + "\n"
