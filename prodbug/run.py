"""``prodbug run [options] -- CMD ARGS...``: start CMD with the agent in its Python processes.

The options set the agent's ``PRODBUG_*`` variables, one to one; then ``prodbug run``
puts its bootstrap folder (``prodbug/_bootstrap``, a ``sitecustomize`` that chains to the
one it shadows) first on ``PYTHONPATH``, sets ``PRODBUG_RUN_PID`` to its own pid and
replaces itself with CMD (``exec``: same pid, so signals sent to it reach CMD directly).
The bootstrap then starts the agent in CMD's process and in the workers multiprocessing
spawns for it; forked workers get theirs from the agent's fork hook. Any other Python
process started under CMD (pip, a ``python -c``) is left alone unless ``--every-python``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from prodbug.config import _ENV, AgentConfig
from prodbug.errors import ConfigError

__all__ = ["BOOTSTRAP_DIR", "RUN_ENV", "configure_parser", "main"]

#: The folder ``prodbug run`` puts first on ``PYTHONPATH`` (not a package: it holds only
#: ``sitecustomize.py``).
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"

#: What ``prodbug run`` tells the bootstrap: the pid CMD runs as, and whether every Python
#: process should start an agent.
RUN_ENV = ("PRODBUG_RUN_PID", "PRODBUG_RUN_EVERY_PYTHON")

_HELP = {
    "listen": ("ADDR", "also listen on TCP, e.g. tcp://127.0.0.1:7661 (default: local ipc "
                       "only, reached on this host with prodbug ps / --pid)"),
    "server_secret_key": ("PATH", "the agent's secret certificate (.key_secret, mode 0600 or "
                                  "0400)"),
    "authorized_keys": ("PATH", "a directory (or file) of the client .key files allowed in"),
    "allow_remote": (None, "allow a non-loopback --listen address"),
    "runtime_dir": ("DIR", "the local registry directory (default: $XDG_RUNTIME_DIR/prodbug, "
                           "else a private prodbug-UID folder in the temp dir)"),
    "audit_log": ("PATH", "also append audit records to this file"),
    "max_message_size": ("BYTES", "largest request the agent accepts"),
    "hang_dump": ("SECONDS", "dump all stacks to the registry when the agent cannot answer "
                             "for this long"),
    "dump_signal": ("SIGNUM", "signal that dumps the C-level stacks: auto, off or a number"),
    "session_heartbeat": ("SECONDS", "pdb/VS Code session heartbeat"),
    "session_idle": ("SECONDS", "end a debugger session idle this long"),
    "service": ("NAME", "the service these processes belong to (they share one door)"),
}
_PATHS = ("server_secret_key", "authorized_keys", "runtime_dir", "audit_log")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``run``'s options to its sub-parser (keep this light: no heavy imports)."""
    agent = parser.add_argument_group(
        "agent settings (each sets the PRODBUG_* variable named; unset ones keep the "
        "environment's)")
    for name, var in _ENV.items():
        metavar, text = _HELP.get(name, ("VALUE", "agent setting"))
        flag = "--" + name.replace("_", "-")
        if metavar is None:
            agent.add_argument(flag, dest=name, action="store_const", const="1",
                               help=f"{text} ({var}=1)")
        else:
            agent.add_argument(flag, dest=name, metavar=metavar, help=f"{text} ({var})")
    parser.add_argument("--every-python", action="store_true",
                        help="start the agent in every Python process under CMD, not only "
                             "the service's own (CMD's process and multiprocessing workers)")
    # dest "argv": the CLI's sub-command is args.command
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...",
                        help="the command to run; it replaces prodbug (same pid)")


def service_environment(args: argparse.Namespace, environ: dict[str, str],
                        pid: int) -> dict[str, str]:
    """The environment CMD runs with: ``environ`` plus the options, the bootstrap folder
    first on ``PYTHONPATH`` and ``PRODBUG_RUN_PID``. Raises ``ConfigError`` when the
    agent's settings are wrong (checked here, before the service starts)."""
    env = dict(environ)
    for name, var in _ENV.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in _PATHS:
            # The service may change its directory (gunicorn --chdir): pass absolute paths.
            value = os.path.abspath(os.path.expanduser(value))
        env[var] = value
    _check_agent_settings(env)
    bootstrap = str(BOOTSTRAP_DIR)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.abspath(p) != bootstrap]
    env["PYTHONPATH"] = os.pathsep.join([bootstrap, *rest])  # no empty entry: that means cwd
    env["PRODBUG_RUN_PID"] = str(pid)
    if args.every_python:
        env["PRODBUG_RUN_EVERY_PYTHON"] = "1"
    else:
        env.pop("PRODBUG_RUN_EVERY_PYTHON", None)
    return env


def _check_agent_settings(env: dict[str, str]) -> None:
    """Fail at deploy time, with the fix, rather than run the service without its agent."""
    from prodbug.keys import load_authorized_keys, load_secret_certificate

    config = AgentConfig.load(env)
    if config.listen is not None:
        if config.server_secret_key is not None:
            load_secret_certificate(config.server_secret_key)
        if config.authorized_keys is not None:
            load_authorized_keys(config.authorized_keys)


def resolve_command(program: str, path: str | None) -> str:
    """The executable CMD names, as the shell would find it; ``ConfigError`` if none."""
    if os.sep in program:
        if not os.path.exists(program):
            raise ConfigError(f"cannot run {program}: no such file")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise ConfigError(f"cannot run {program}: not an executable file")
        return program
    found = shutil.which(program, path=path if path is not None else os.defpath)
    if found is None:
        raise ConfigError(f"command not found: {program} (not in PATH); "
                          f"usage: prodbug run [options] -- CMD ARGS...")
    return found


def main(args: argparse.Namespace) -> int:
    """Run the command; returns an exit code (or execs and never returns)."""
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("no command to run; usage: prodbug run [options] -- CMD ARGS... "
                          "(for example: prodbug run -- gunicorn app:app)")
    env = service_environment(args, dict(os.environ), os.getpid())
    executable = resolve_command(command[0], env.get("PATH"))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(executable, command, env)  # noqa: S606  (the point: CMD keeps our pid)
    except OSError as exc:
        raise ConfigError(f"cannot run {command[0]}: {exc.strerror}") from None
    return 0  # not reached: execve replaced this process
