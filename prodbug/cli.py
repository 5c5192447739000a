"""The ``prodbug`` command. Imports only what the command at hand needs (zmq costs ~50 ms)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodbug._version import __version__
from prodbug.errors import ConfigError, ProdbugError

if TYPE_CHECKING:
    from prodbug.connect import KeyChoice
    from prodbug.render import Style

__all__ = ["main"]

EXIT_CODES = """\
exit codes:
  0  success
  1  the agent answered with an error
  2  usage or configuration error (bad arguments, missing or unsafe key file)
  3  target unreachable, or no reply in time
  4  not authorized: the agent refused the key, or its role may not run the command

environment:
  PRODBUG_CLIENT_SECRET_KEY  your secret certificate (default ~/.config/prodbug/client.key_secret)
  PRODBUG_SERVER_KEY         the agent's public key: its .key file or the Z85 text
  PRODBUG_CONFIG             named targets (default ~/.config/prodbug/config.toml)
  NO_COLOR                   plain output even on a terminal
"""

TARGET_HELP = (
    "NAME (a named target: prodbug targets lists them), HOST (port 7661), HOST:PORT, "
    "tcp://HOST:PORT or ipc://PATH; "
    "omit it when exactly one local agent runs"
)
PID_HELP = ("a process: with a TARGET, that process of the service behind it (its door "
            "relays; prodbug ps TARGET lists them); alone, a process on this host, found in "
            "the registry (no keys needed)")


def _connection_args(parser: argparse.ArgumentParser, *, fleet: bool = False) -> None:
    if fleet:
        parser.add_argument("target", nargs="*", metavar="TARGET", help=TARGET_HELP + "; "
                            "several TARGETs (or --targets FILE) ask them all at once and "
                            "merge the answers")
    else:
        parser.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("--pid", type=int, help=PID_HELP)
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="how long to wait for the agent (default: the named target's "
                             "timeout, else 5; 15 for pdb and vscode)")
    parser.add_argument("--key", metavar="PATH", help="your secret certificate "
                        "(default: $PRODBUG_CLIENT_SECRET_KEY, else ~/.config/prodbug/"
                        "client.key_secret)")
    parser.add_argument("--server-key", metavar="KEY", help="the agent's public key: a .key "
                        "file or Z85 text (default: $PRODBUG_SERVER_KEY)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _keygen_args(p: Any) -> None:
    p.add_argument("--name", default="client", help="file and key name (default: %(default)s)")
    p.add_argument("--dir", type=Path, default=Path("~/.config/prodbug"),
                   help="where to write (default: %(default)s)")
    p.add_argument("--role", choices=["observer", "debugger"], default="observer",
                   help="role written into the public certificate (default: %(default)s); "
                        "the agent's owner decides by installing the file")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser, with the arguments of ``command`` only (None: none)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("--no-color", action="store_true", help="never colour the output")
    parser = argparse.ArgumentParser(
        prog="prodbug",
        description="Debug a live Python service: stacks, pdb and VS Code over one guarded port.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"prodbug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str) -> Any:
        if name != command:  # listed in --help, but its arguments are not built
            sub.add_parser(name, help=help_text, add_help=False)
            return _Unbuilt()
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[common])

    _keygen_args(add("keygen", "create a CURVE certificate pair (NAME.key, NAME.key_secret)"))

    p = add("info", "show who a process is and what debug machinery it has")
    _connection_args(p)
    p = add("stacks", "dump every thread's stack, with CPU use and state")
    _connection_args(p, fleet=True)
    p.add_argument("--targets", metavar="FILE",
                   help="ask every TARGET listed in FILE (one per line, # comments)")
    p.add_argument("--concurrency", type=int, metavar="N", default=32,
                   help="with several targets: how many to ask at once (default: %(default)s)")
    p.add_argument("--all", action="store_true",
                   help="every process of the service behind TARGET (or, with no TARGET, "
                        "every local agent) at once, identical stacks grouped across them; "
                        "a process that does not answer within --timeout is named, not "
                        "waited for")
    p.add_argument("--cpu-interval", type=float, default=None, metavar="SECONDS",
                   help="sample per-thread CPU this long (0 skips); default: over the time "
                        "since the agent's previous dump, else a 0.05 s sample")
    p.add_argument("--locals", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="show locals of the N innermost frames of each thread (default N: 1); "
                        "values are rendered without running the host's code, and names that "
                        "look secret are redacted")
    p.add_argument("--no-redact", action="store_true",
                   help="show secret-looking locals too (needs a debugger key)")
    p.add_argument("--no-group", action="store_true",
                   help="show every thread and task, even when many share one stack")
    p.add_argument("--no-fallback", action="store_true",
                   help="with --pid: do not fall back to a C-level faulthandler dump when the "
                        "agent does not answer in time")
    p = add("audit", "show the agent's latest audit records: who ran what, and who was refused "
                     "(debugger role)")
    _connection_args(p)
    p = add("pdb", "open pdb in the live process: stop a thread, break at a line, look at a "
                   "thread, or examine the last crash (debugger role)")
    _connection_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--thread", metavar="NAME|ID",
                     help="stop that running thread at its next line")
    how.add_argument("--break", dest="break_at", metavar="FILE:LINE",
                     help="stop the first thread that reaches FILE:LINE, running or new")
    how.add_argument("--inspect", metavar="THREAD",
                     help="look at a thread's frames without stopping it (values are live)")
    how.add_argument("--post-mortem", action="store_true",
                     help="examine the last unhandled exception, from any thread")
    p.add_argument("--condition", metavar="EXPR",
                   help="with --break: stop only when EXPR is true in that frame")
    p = add("vscode", "attach VS Code to the live process through the guarded port "
                      "(debugpy; debugger role)")
    _connection_args(p)
    p.add_argument("--port", type=int, default=5678,
                   help="local port VS Code attaches to (default: %(default)s)")
    p.add_argument("--local-root", default="${workspaceFolder}",
                   help="your checkout of the service's code (default: %(default)s)")
    p.add_argument("--remote-root", help="where that code lives in the service "
                   "(default: the process's working directory)")
    p.add_argument("--just-my-code", action=argparse.BooleanOptionalAction, default=True,
                   help="step only through your code (default: yes)")
    p.add_argument("--yes", action="store_true",
                   help="start debugpy even where it slows the process (Python <= 3.11)")
    p.add_argument("--write-launch-json", nargs="?", const=".vscode/launch.json",
                   metavar="PATH", help="merge the attach configuration into launch.json "
                   "(default PATH: .vscode/launch.json)")
    p = add("ps", "list a service's processes (door and members) through TARGET, or the "
                  "agents on this host with no TARGET")
    _connection_args(p)
    # These three live in modules of their own: only the one being run is imported.
    for name, module, text in _OWN_MODULE_COMMANDS:
        p = add(name, text)
        if name == command:
            import importlib

            importlib.import_module(module).configure_parser(p)
    return parser


class _Unbuilt:
    """Stands for the sub-parser of a command that is not being run: building every
    command's arguments on each run would cost more than the command itself."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Unbuilt:
        return self


_OWN_MODULE_COMMANDS = (
    ("run", "prodbug.run", "start a command so that its Python processes (the service's) "
                           "start the agent, with no code change"),
    ("targets", "prodbug.named", "list the named targets of ~/.config/prodbug/config.toml; "
                                 "--accept NAME pins a changed agent key"),
    ("inject", "prodbug.inject", "load the agent into a running Python process that never "
                                 "imported it (gdb; ptrace rights needed)"),
    ("snapshot", "prodbug.probecli", "capture the stack and locals the next time a line runs, "
                                     "without stopping the thread (debugger role)"),
    ("logpoint", "prodbug.probecli", "print a formatted line each time a line runs, rate-"
                                     "limited, without stopping anything (debugger role)"),
    ("profile", "prodbug.profilecli", "sample every thread's stack for N seconds: collapsed "
                                      "stacks, speedscope JSON or an SVG flame graph"),
    ("memory", "prodbug.memorycli", "RSS and its trend, gc counts, top object types; "
                                    "--trace SECONDS for allocation sites (tracemalloc)"),
)

#: The connection arguments every command that reaches an agent takes (for the modules
#: of _OWN_MODULE_COMMANDS).
connection_args = _connection_args


def _command_word(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the options
    before it take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _style(args: argparse.Namespace) -> Style:
    from prodbug.render import Style

    enabled = (sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    return Style(enabled)


def _keys(args: argparse.Namespace) -> KeyChoice:
    from prodbug.connect import KeyChoice

    return KeyChoice(args.key, args.server_key)


def _request(args: argparse.Namespace, cmd: str, req_args: dict[str, Any],
             fallback: bool = False) -> dict[str, Any]:
    from prodbug.errors import ReplyTimeout

    try:
        if args.target is None and args.pid is not None:
            # A process on this host: its ipc socket, spoken to without libzmq (zmtp.py).
            from prodbug import registry, zmtp

            notes: list[str] = []
            endpoint = str(registry.find_entry(args.pid, notes)["endpoint"])
            for note in notes:  # someone else's files where ours are looked for
                print(f"prodbug: {note}", file=sys.stderr)
            return zmtp.request(endpoint, cmd, req_args, timeout=args.timeout)
        from prodbug.connect import connect

        with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args)) as conn:
            return conn.client.request(cmd, req_args)
    except ReplyTimeout as exc:
        from prodbug.target import resolve_target

        target = resolve_target(args.target, args.pid)
        if not fallback or target.pid is None or target.relayed or target.scheme:
            raise
        from prodbug import registry
        from prodbug.faultdump import trigger_dump

        result = trigger_dump(registry.find_entry(target.pid))
        print(f"prodbug {cmd}: the agent did not answer within {args.timeout:g}s ({exc}); "
              f"showing a C-level dump made by faulthandler on signal "
              f"{result['dump_signal']} instead", file=sys.stderr)
        return result


#: One request to the agent TARGET/--pid names (for the modules of _OWN_MODULE_COMMANDS).
request = _request


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_keygen(args: argparse.Namespace) -> int:
    from prodbug.keys import write_certificate_pair

    public, secret = write_certificate_pair(args.dir.expanduser(), args.name, args.role,
                                            force=args.force)
    if args.json:
        _print_json({"public": str(public), "secret": str(secret), "role": args.role})
        return 0
    print(f"wrote {public} (public, share it) and {secret} (secret, mode 0600)")
    if args.name == "server":
        print("on the service: PRODBUG_SERVER_SECRET_KEY=" + str(secret))
        print(f"operators set PRODBUG_SERVER_KEY={public} (or its public-key text)")
    else:
        print(f"to authorize it, the service owner copies {public.name} into the agent's "
              f"PRODBUG_AUTHORIZED_KEYS directory (role: {args.role})")
        from prodbug.connect import DEFAULT_KEY_DIR

        if secret != (DEFAULT_KEY_DIR / "client.key_secret").expanduser():
            print(f"then use it with: export PRODBUG_CLIENT_SECRET_KEY={secret}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from prodbug.render import render_info

    result = _request(args, "info", {})
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(render_info(result, _style(args)))
    return 0


def _cmd_stacks(args: argparse.Namespace) -> int:
    from prodbug.render import render_stacks

    if args.cpu_interval is not None and not 0 <= args.cpu_interval <= 1:
        raise ConfigError("--cpu-interval must be between 0 and 1 second")
    if not 0 <= args.locals <= 5:
        raise ConfigError("--locals takes 0 to 5 frames")
    req: dict[str, Any] = {}
    if args.cpu_interval is not None:
        req["cpu_interval"] = args.cpu_interval
    if args.locals:
        req["locals"] = args.locals
    if args.no_redact:
        req["redact"] = False
    fleet = list(args.target or [])
    if args.targets:
        from prodbug.fleet import read_targets_file

        fleet += read_targets_file(args.targets)
    fleet = _expand_fleet(fleet, args.timeout)
    if len(fleet) > 1:
        return _stacks_fleet(args, req, fleet)
    args.target = fleet[0] if fleet else None
    if args.all:
        return _stacks_all(args, req)
    result = _request(args, "stacks", req, fallback=not args.no_fallback)
    if args.json:
        _print_json({"processes": [result]})
    else:
        sys.stdout.write(render_stacks(result, _style(args), group=not args.no_group))
    return 0


def _expand_fleet(items: list[str], timeout: float) -> list[str]:
    """Named groups become their members, and ``kube://...label:SELECTOR`` the pods it
    selects (kubectl asked once); every other TARGET stands for itself."""
    if not items:
        return []
    from prodbug import named

    out: list[str] = []
    for item in items:
        group = named.resolve_group(item)
        if group is not None:
            out += group
        elif item.startswith("kube://"):
            from prodbug.transport import kube

            out += kube.expand_selector(item, timeout) if kube.is_selector(item) else [item]
        else:
            out.append(item)
    return list(dict.fromkeys(out))  # the same target twice is asked once


def _stacks_fleet(args: argparse.Namespace, req: dict[str, Any], targets: list[str]) -> int:
    from prodbug.connect import connect
    from prodbug.fanout import ask_all_through
    from prodbug.fleet import merge_stacks, run_fleet
    from prodbug.render_all import render_stacks_all

    if args.pid is not None:
        raise ConfigError("--pid names one process of one target; with several targets "
                          "leave it out (or use --all)")
    if args.timeout <= 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    keys = _keys(args)

    def ask(target: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with connect(target, timeout=timeout, keys=keys) as conn:
            left = max(0.1, round(deadline - time.monotonic(), 1))
            if args.all:
                return ask_all_through(conn.client, "stacks", req, left)
            return conn.client.request("stacks", req, timeout=left)

    entries = run_fleet(targets, ask, timeout=args.timeout, concurrency=args.concurrency,
                        progress=sys.stderr.isatty() and not args.json)
    if args.json:
        _print_json({"targets": entries})
    else:
        sys.stdout.write(render_stacks_all(merge_stacks(entries), _style(args),
                                           group=not args.no_group))
    return 0 if all(e["ok"] for e in entries) else 3


def _stacks_all(args: argparse.Namespace, req: dict[str, Any]) -> int:
    from prodbug.connect import connect
    from prodbug.fanout import ask_all_local, ask_all_through
    from prodbug.render_all import render_stacks_all

    if args.pid is not None:
        raise ConfigError("--all asks every process: leave out --pid")
    if args.timeout <= 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    if args.target:
        with connect(args.target, timeout=args.timeout, keys=_keys(args)) as conn:
            result = ask_all_through(conn.client, "stacks", req, args.timeout)
    else:
        result = ask_all_local("stacks", req, args.timeout)
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(render_stacks_all(result, _style(args), group=not args.no_group))
    return 0 if result["processes"] else 3


def _cmd_audit(args: argparse.Namespace) -> int:
    result = _request(args, "audit", {})
    if args.json:
        _print_json(result)
        return 0
    from prodbug.render import render_audit

    sys.stdout.write(render_audit(result.get("records", [])))
    return 0


def _cmd_pdb(args: argparse.Namespace) -> int:
    from prodbug.connect import connect
    from prodbug.pdbcli import run_pdb

    open_args: dict[str, Any]
    if args.thread:
        open_args = {"mode": "thread", "thread": args.thread}
    elif args.break_at:
        where, _, line = args.break_at.rpartition(":")
        if not where or not line.isdigit():
            raise ConfigError(f'--break "{args.break_at}" is not FILE:LINE (e.g. app/views.py:88)')
        open_args = {"mode": "break", "file": where, "line": int(line)}
        if args.condition:
            open_args["condition"] = args.condition
    elif args.inspect:
        open_args = {"mode": "inspect", "thread": args.inspect}
    else:
        open_args = {"mode": "post_mortem"}
    if args.condition and not args.break_at:
        raise ConfigError("--condition goes with --break")
    import secrets

    with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args),
                 routing_id=b"pdb-" + secrets.token_bytes(8)) as conn:
        return run_pdb(conn.client, open_args)


def _cmd_vscode(args: argparse.Namespace) -> int:
    import secrets

    from prodbug.connect import connect
    from prodbug.vscode import run_vscode

    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} is out of range")
    with connect(args.target, args.pid, timeout=args.timeout, keys=_keys(args),
                 routing_id=b"dap-" + secrets.token_bytes(8)) as conn:
        return run_vscode(conn.client, port=args.port, local_root=args.local_root,
                          remote_root=args.remote_root, just_my_code=args.just_my_code,
                          yes=args.yes, label=conn.label,
                          launch_json=Path(args.write_launch_json)
                          if args.write_launch_json else None)


def _cmd_targets(args: argparse.Namespace) -> int:
    from prodbug import named

    return named.main(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from prodbug import run

    return run.main(args)


def _cmd_inject(args: argparse.Namespace) -> int:
    from prodbug import inject

    return inject.main(args)


def _cmd_ps(args: argparse.Namespace) -> int:
    from prodbug import registry
    from prodbug.render import render_ps
    from prodbug.textsafe import printable

    service: str | None = None
    if args.target:
        result = _request(args, "ps", {})
        entries, service = list(result.get("agents", [])), result.get("service")
    else:
        if args.pid is not None:
            raise ConfigError("ps lists every local agent; --pid goes with a TARGET")
        notes: list[str] = []
        entries = [registry.describe_entry(e) for e in registry.list_entries(notes=notes)]
        for note in notes:  # e.g. a default directory another user took: never hide it
            print(f"prodbug ps: {printable(note)}", file=sys.stderr)
    if args.json:
        _print_json({"service": service, "agents": entries})
    else:
        sys.stdout.write(render_ps(entries, _style(args), service=service))
    return 0


_COMMANDS = {"keygen": _cmd_keygen, "info": _cmd_info, "stacks": _cmd_stacks,
             "audit": _cmd_audit, "ps": _cmd_ps, "pdb": _cmd_pdb, "vscode": _cmd_vscode,
             "run": _cmd_run, "inject": _cmd_inject, "targets": _cmd_targets}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see ``prodbug --help``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    if args.command in ("pdb", "vscode", "snapshot", "logpoint", "profile", "memory"):
        # A terminated session CLI (kill, a closed terminal) ends its session as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(AttributeError):
            signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        if getattr(args, "timeout", 0) is None:  # not given: the named target's, else 5 s
            # connect.DEFAULT_TIMEOUT (not imported for local requests); opening pdb or
            # VS Code may first load the debugger into a busy process: on 3.10/3.11 with a
            # spinning thread, pydevd's tracing helper alone takes ~4.5 s to import.
            args.timeout = 15.0 if args.command in ("pdb", "vscode", "snapshot", "logpoint",
                                                    "profile", "memory") else 5.0
            if getattr(args, "target", None):
                from prodbug.named import default_timeout

                args.timeout = default_timeout(args.target, args.timeout)
        command = _COMMANDS.get(args.command)
        if command is None:  # a command of _OWN_MODULE_COMMANDS: its module's main()
            import importlib

            module = next(m for n, m, _ in _OWN_MODULE_COMMANDS if n == args.command)
            return int(importlib.import_module(module).main(args))
        return command(args)
    except ProdbugError as exc:
        if args.debug:
            raise
        from prodbug.textsafe import printable  # the message may quote the agent

        print(f"prodbug {args.command}: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
