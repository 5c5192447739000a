"""``kube://`` targets: ``kubectl port-forward`` run for as long as the connection lives.

``kube://[NAMESPACE/][TYPE/]NAME[:PORT]``: the pod (or anything ``kubectl port-forward``
accepts: ``deployment/api``, ``svc/api``, ...) whose agent listens on PORT (default 7661).
kubectl picks a free local port itself (``:PORT``) and says which on its first line; the
client then connects to ``127.0.0.1:LOCAL`` with CURVE as for any TCP target.

``kube://[NAMESPACE/]label:SELECTOR[:PORT]`` names pods by label; ``expand_selector``
turns it into one target per running pod (for commands that ask many), and a command that
asks one pod accepts it when exactly one pod matches.

kubectl is ended on every way out: ``close()``, an error while it starts, Ctrl-C (it runs
in a session of its own, so the terminal's Ctrl-C reaches only prodbug, which then closes
its sessions through the tunnel), and, on Linux, the death of prodbug itself, even by
SIGKILL (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

from prodbug.config import DEFAULT_PORT
from prodbug.connect import CARRIERS, Carrier
from prodbug.errors import AuthError, ConfigError, ProdbugError, TargetUnreachable
from prodbug.target import Target
from prodbug.textsafe import printable
from prodbug.transport import spawn

__all__ = ["KubeForward", "KubeTarget", "expand_selector", "is_selector", "open_kube",
           "parse_kube"]

_MANUAL = (f"or forward by hand: kubectl port-forward [-n NAMESPACE] POD :{DEFAULT_PORT}, "
           f"then use 127.0.0.1:LOCALPORT from its 'Forwarding from' line")
_INSTALL = ("kubectl is not on PATH: install it (https://kubernetes.io/docs/tasks/tools/) "
            "and make sure 'kubectl get pods' works, " + _MANUAL)

# Names as Kubernetes allows them (DNS-1123); nothing that kubectl could read as an option.
_NAMESPACE = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
_TYPE = re.compile(r"[A-Za-z]+(?:\.[a-z0-9.-]+)?")
#: What ``kubectl port-forward TYPE/NAME`` accepts besides pods (short names included).
_RESOURCE_TYPES = frozenset({
    "pod", "pods", "po", "deployment", "deployments", "deploy", "replicaset", "replicasets",
    "rs", "statefulset", "statefulsets", "sts", "daemonset", "daemonsets", "ds", "service",
    "services", "svc", "job", "jobs", "replicationcontroller", "replicationcontrollers",
    "rc"})
_SELECTOR = re.compile(rf"(?:(?P<ns>{_NAMESPACE})/)?label:(?P<sel>.+?)(?::(?P<port>\d{{1,5}}))?")
#: kubectl's own line, whole: a warning the API server relays (an admission webhook's)
#: could carry the same words mid-line and choose the port we connect to.
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+\s*$")
# klog's prefix on kubectl's error lines: "E0612 10:00:00.000000   1234 file.go:12] "
_KLOG = re.compile(r"^[EWIF]\d{4} [\d:.]+\s+\d+ [\w.-]+:\d+\] ")


@dataclass(frozen=True)
class KubeTarget:
    """A parsed ``kube://`` address: ``resource`` is what kubectl port-forward is given."""

    namespace: str | None
    resource: str
    port: int

    @property
    def address(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{where}{self.resource}:{self.port}"


def _strip(text: str) -> str:
    return text[len("kube://"):] if text.startswith("kube://") else text


def _port(text: str | None, whole: str) -> int:
    port = int(text) if text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ConfigError(f'kube://{whole}: port {port} is out of range (1-65535)')
    return port


def is_selector(text: str) -> bool:
    """Whether ``text`` (with or without ``kube://``) names pods by label."""
    return _SELECTOR.fullmatch(_strip(text)) is not None


def parse_kube(text: str) -> KubeTarget:
    """``[kube://][NAMESPACE/][TYPE/]NAME[:PORT]`` -> KubeTarget, or a ConfigError.

    ``a/b`` is TYPE/NAME when ``a`` is a resource type kubectl port-forward knows
    (``deployment``, ``svc``, ...), NAMESPACE/NAME otherwise; ``a/b/c`` is always
    NAMESPACE/TYPE/NAME.
    """
    rest = _strip(text)
    path, _, port_text = rest.rpartition(":") if re.search(r":\d+$", rest) else (rest, "", "")
    parts = path.split("/")
    namespace: str | None = None
    kind: str | None = None
    if len(parts) == 3:
        namespace, kind, name = parts
    elif len(parts) == 2 and parts[0].split(".")[0].lower() in _RESOURCE_TYPES:
        kind, name = parts
    elif len(parts) == 2:
        namespace, name = parts
    elif len(parts) == 1:
        name = parts[0]
    else:
        name = ""
    if (not _NAME.fullmatch(name) or (kind is not None and not _TYPE.fullmatch(kind))
            or (namespace is not None and not re.fullmatch(_NAMESPACE, namespace))):
        raise ConfigError(
            f'"kube://{rest}" is not kube://[NAMESPACE/][TYPE/]NAME[:PORT] (e.g. '
            f'kube://api-7f9, kube://prod/api-7f9:{DEFAULT_PORT}, kube://prod/deployment/api) '
            f'nor kube://[NAMESPACE/]label:SELECTOR[:PORT] (e.g. kube://prod/label:app=api)')
    return KubeTarget(namespace, f"{kind}/{name}" if kind else name, _port(port_text, rest))


# -- starting kubectl: from one thread that lives as long as prodbug -----------------------

def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise ConfigError(_INSTALL)
    return found


def _last_words(lines: list[str]) -> str:
    """kubectl's own message: the last line that is not klog noise, else the last one."""
    plain = [ln for ln in lines if ln.strip() and not _KLOG.match(ln)]
    chosen = plain or [_KLOG.sub("", ln) for ln in lines if ln.strip()]
    return chosen[-1].strip() if chosen else ""


def _kubectl_error(label: str, lines: list[str], doing: str) -> ProdbugError:
    """kubectl's failure as one line that says what to do."""
    said = _last_words(lines)
    if not said:
        return TargetUnreachable(f"{label}: {doing} failed without a word")
    if "(NotFound)" in said:
        what = said.split("(NotFound):", 1)[1].strip()
        return TargetUnreachable(f"{label}: {what} (kubectl get pods [-n NAMESPACE] lists them; "
                                 f"kubectl config current-context says which cluster)")
    if "(Forbidden)" in said:
        return AuthError(f"{label}: your Kubernetes user may not do this: {said}")
    if said.startswith(("The connection to the server", "Unable to connect to the server")):
        hint = (" (kubectl has no cluster configured: set KUBECONFIG or kubectl config "
                "use-context)" if "localhost:8080" in said else "")
        return TargetUnreachable(f"{label}: cannot reach the Kubernetes API: {said}{hint}")
    if said.startswith(("Error in configuration", "error: context", "error: current-context",
                        "error loading config", "error: error loading config")):
        return ConfigError(f"{label}: kubectl's configuration: {said}")
    return TargetUnreachable(f"{label}: {doing} failed: {said}")


class KubeForward:
    """A running ``kubectl port-forward`` (a Carrier); ``close()`` ends it."""

    def __init__(self, proc: subprocess.Popen[bytes], label: str, relay_pid: int | None,
                 remote_port: int) -> None:
        self.proc = proc
        self.remote_port = remote_port
        self.label = label
        self.relay_pid = relay_pid
        self.curve = True  # a TCP port forwarded to the agent's CURVE port
        self.endpoint = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=50)
        #: what kubectl reported wrong once forwarding (e.g. nothing listens in the pod)
        self.errors: collections.deque[str] = collections.deque(maxlen=5)
        self._startup: queue.Queue[str | None] = queue.Queue()
        self._started = False
        self._closed = False
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,),
                                        name="prodbug-kubectl-output", daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        # Always drained: kubectl says "Handling connection for N" on each connection and
        # would block once a full pipe stopped it.
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if not line.startswith("Handling connection for"):
                        self.lines.append(line)
                    if not self._started:
                        self._started = _FORWARDING.match(line) is not None
                        self._startup.put(line)
                    elif "error" in line.lower():
                        self.errors.append(_KLOG.sub("", line))
        self._startup.put(None)

    def wait_ready(self, deadline: float) -> None:
        """Read kubectl's output until it says which local port it forwards from."""
        while True:
            try:
                line = self._startup.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TargetUnreachable(
                    f"{self.label}: kubectl port-forward did not start forwarding in time"
                    f"{': ' + _last_words(list(self.lines)) if self.lines else ''} (is the "
                    f"cluster reachable? does kubectl ask for a login? raise --timeout)"
                ) from None
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(max(0.1, deadline - time.monotonic()))
                raise _kubectl_error(self.label, list(self.lines), "kubectl port-forward")
            match = _FORWARDING.match(line)
            if match is not None:
                self.endpoint = f"tcp://127.0.0.1:{match[1]}"
                return

    def close(self) -> None:
        """End kubectl (its whole process group) and reap it; idempotent."""
        if self._closed:
            return
        self._closed = True
        proc = self.proc
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # its own session: pgid == pid while unreaped
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reader.join(2)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        if self.errors:  # the command's own error names only 127.0.0.1:LOCAL; this says why
            said = self.errors[-1]
            hint = (f"nothing listens on port {self.remote_port} in the pod (the agent's "
                    f"PRODBUG_LISTEN, e.g. tcp://127.0.0.1:{self.remote_port}, names the "
                    f"port); kubectl: " if "connection refused" in said else "kubectl: ")
            # What the node or runtime said: escaped, never raw to the operator's terminal.
            print(printable(f"prodbug: {self.label}: {hint}{said}"), file=sys.stderr)


def _namespace_args(namespace: str | None) -> list[str]:
    return ["--namespace", namespace] if namespace else []


def expand_selector(text: str, timeout: float) -> list[str]:
    """``kube://[NAMESPACE/]label:SELECTOR[:PORT]`` -> ``["kube://NS/POD:PORT", ...]``, one
    per Running pod that matches (sorted), by ``kubectl get pods -l SELECTOR -o json``.

    Raises ConfigError for text that is no selector, TargetUnreachable when no pod runs
    that matches (saying how many match but do not run) or kubectl fails.
    """
    match = _SELECTOR.fullmatch(_strip(text))
    if match is None:
        raise ConfigError(f'"{text}" is not kube://[NAMESPACE/]label:SELECTOR[:PORT] '
                          f'(e.g. kube://prod/label:app=api,tier=web)')
    namespace, selector = match["ns"], match["sel"]
    port = _port(match["port"], _strip(text))
    label = f"kube://{_strip(text)}"
    if selector.startswith("-") or any(c in selector for c in "\n\r\x00"):
        raise ConfigError(f"{label}: the selector must not start with '-' or hold control "
                          f"characters")
    argv = [_kubectl(), *_namespace_args(namespace), "get", "pods", "--selector", selector,
            "--output", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TargetUnreachable(f"{label}: kubectl get pods gave no answer within "
                                f"{timeout:g}s (is the cluster reachable? raise --timeout)"
                                ) from None
    if done.returncode != 0:
        raise _kubectl_error(label, done.stderr.decode("utf-8", "replace").splitlines(),
                             "kubectl get pods")
    try:
        items = json.loads(done.stdout)["items"]
        pods = [(str(p["metadata"].get("namespace") or namespace or "default"),
                 str(p["metadata"]["name"]), str(p.get("status", {}).get("phase", "")))
                for p in items]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TargetUnreachable(f"{label}: kubectl get pods answered no pod list ({exc})"
                                ) from None
    where = f" in namespace {namespace}" if namespace else ""
    running = sorted((ns, name) for ns, name, phase in pods if phase == "Running")
    if not running and pods:
        others = ", ".join(f"{name} ({phase or 'unknown'})" for _, name, phase in pods[:5])
        raise TargetUnreachable(f"{label}: {len(pods)} pod(s) match {selector}{where} but "
                                f"none is Running: {others}")
    if not running:
        raise TargetUnreachable(f"{label}: no pods match {selector}{where} (kubectl get pods "
                                f"{'-n ' + namespace + ' ' if namespace else ''}--show-labels "
                                f"shows their labels)")
    return [f"kube://{ns}/{name}:{port}" for ns, name in running]


def open_kube(target: Target, timeout: float) -> Carrier:
    """Start ``kubectl port-forward`` to the pod ``target`` names; return once it forwards."""
    deadline = time.monotonic() + timeout
    address = target.address
    if is_selector(address):
        pods = expand_selector(address, timeout)
        if len(pods) > 1:
            shown = ", ".join(p.removeprefix("kube://") for p in pods[:5])
            raise ConfigError(f"kube://{address} matches {len(pods)} pods ({shown}"
                              f"{', ...' if len(pods) > 5 else ''}): name one, e.g. {pods[0]}")
        address = pods[0].removeprefix("kube://")
    kube = parse_kube(address)
    label = f"kube://{address}"
    if target.pid is not None:
        label = f"pid {target.pid} in {label}"
    argv = [_kubectl(), *_namespace_args(kube.namespace), "port-forward", "--address",
            "127.0.0.1", f"--pod-running-timeout={max(1, int(timeout))}s", kube.resource,
            f":{kube.port}"]
    try:
        # A session of its own: the terminal's Ctrl-C (and SIGHUP) stop prodbug only, which
        # still needs the tunnel to close its sessions in the service.
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        raise ConfigError(_INSTALL) from None
    forward = KubeForward(proc, label, target.pid, kube.port)
    try:
        forward.wait_ready(deadline)
    except BaseException:
        forward.close()
        raise
    return forward


CARRIERS["kube"] = open_kube
