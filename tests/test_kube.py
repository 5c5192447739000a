"""``kube://`` targets: the real CLI and real agents behind a stand-in ``kubectl`` that
really forwards (tests/fake_kubectl/kubectl.py), put first on PATH."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pexpect
import psutil
import pytest
from conftest import TARGETS, Keys, Target, run_cli, still_counting, wait_for
from dapclient import DapClient

from prodbug.errors import TargetUnreachable
from prodbug.target import Target as PbTarget
from prodbug.transport.kube import expand_selector, open_kube

FAKE = Path(__file__).parent / "fake_kubectl" / "kubectl.py"
SERVICE = str(TARGETS / "service.py")
WORK_LINE = next(n for n, t in enumerate((TARGETS / "service.py").read_text().splitlines(), 1)
                 if t.strip() == "i += 1")
PROMPT = r"\(Pdb\) "


class Cluster:
    """The stand-in cluster: pods mapped to local ports, and every kubectl run recorded."""

    def __init__(self, root: Path, base_env: dict[str, str], keys: Keys) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "kubectl"
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                           f"{shlex.quote(str(FAKE))} \"$@\"\n")
        wrapper.chmod(0o755)
        self.file = root / "cluster.json"
        self.pids = root / "pids"
        self.pids.mkdir()
        self.pods: list[dict[str, Any]] = []
        self.unreachable = False
        self.save()
        self.env = {**base_env, "PATH": f"{self.bin}{os.pathsep}{base_env.get('PATH', '')}",
                    "FAKE_KUBECTL_CLUSTER": str(self.file), "FAKE_KUBECTL_PIDS": str(self.pids),
                    "PRODBUG_CLIENT_SECRET_KEY": str(keys.debugger),
                    "PRODBUG_SERVER_KEY": str(keys.server_public)}

    def save(self) -> None:
        self.file.write_text(json.dumps({"pods": self.pods, "unreachable": self.unreachable}))

    def pod(self, name: str, agent: Target | None = None, namespace: str = "default",
            labels: dict[str, str] | None = None, phase: str = "Running") -> None:
        ports = {"7661": int(agent.host_port.rsplit(":", 1)[1])} if agent else {}
        self.pods.append({"namespace": namespace, "name": name, "labels": labels or {},
                          "phase": phase, "ports": ports})
        self.save()

    def started(self) -> list[int]:
        return [int(p.name) for p in self.pids.iterdir()]

    def alive(self) -> list[int]:
        """Recorded kubectl runs still running (a zombie waiting for init counts as gone)."""
        def running(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False
        return [pid for pid in self.started() if running(pid)]

    def none_left(self) -> bool:
        return wait_for(lambda: not self.alive(), timeout=10)


@pytest.fixture
def cluster(tmp_path: Path, base_env: dict[str, str], keys: Keys) -> Any:
    made = Cluster(tmp_path, base_env, keys)
    yield made
    for pid in made.alive():  # a failed test's leftover: never leak it past the test
        psutil.Process(pid).kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stacks_through_a_pod_and_to_a_pid_behind_its_door(spawn, agent_env, cluster) -> None:
    env = {**agent_env, "PRODBUG_LISTEN": f"tcp://127.0.0.1:{_free_port()}"}
    door, member = spawn("member", env=env), spawn("member", env=env)
    assert (door.facts["role"], member.facts["role"]) == ("door", "member")
    cluster.pod("api-0", door, labels={"app": "api"})

    done = run_cli("stacks", "kube://default/api-0", "--json", "--cpu-interval", "0",
                   env=cluster.env)
    assert done.returncode == 0, done.stderr
    assert [p["pid"] for p in json.loads(done.stdout)["processes"]] == [door.pid]
    assert cluster.none_left()

    relayed = run_cli("stacks", "kube://api-0", "--pid", str(member.pid), "--json",
                      "--cpu-interval", "0", env=cluster.env)
    assert relayed.returncode == 0, relayed.stderr
    (process,) = json.loads(relayed.stdout)["processes"]
    assert (process["pid"], process["role"]) == (member.pid, "member")

    # A selector that matches one pod is a way to name it.
    info = run_cli("info", "kube://default/label:app=api", "--json", env=cluster.env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["pid"] == door.pid
    assert len(cluster.started()) == 4  # get pods + 3 port-forwards
    assert cluster.none_left()


def test_vscode_attaches_through_the_tunnel_and_sigkill_leaves_no_kubectl(
        spawn, agent_env, cluster, vscode, tmp_path: Path) -> None:
    service = spawn("service", env={**agent_env, "COUNTER_FILE": str(tmp_path / "counter")})
    service.facts["counter"] = str(tmp_path / "counter")
    cluster.pod("api-7f9", service)
    cli = vscode("kube://api-7f9", "--port", "0", "--yes", env=cluster.env)
    port = cli.port()
    config = json.loads("".join(cli.out))
    assert config["connect"] == {"host": "127.0.0.1", "port": port}
    assert config["name"] == "prodbug: kube://api-7f9"

    dap = DapClient(port)
    dap.attach({SERVICE: [WORK_LINE]})
    stopped = dap.event("stopped")["body"]
    frames = dap.request("stackTrace", threadId=stopped["threadId"], startFrame=0,
                         levels=5)["stackFrames"]
    assert (frames[0]["name"], frames[0]["line"]) == ("work", WORK_LINE)
    (pid,) = cluster.alive()
    cli.proc.send_signal(signal.SIGKILL)
    assert cluster.none_left(), f"kubectl {pid} outlived prodbug vscode"
    assert still_counting(service)  # the agent saw VS Code go and resumed the thread
    dap.close()


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_pdb_session_ends_and_takes_kubectl_with_it(spawn, agent_env, cluster, tmp_path: Path,
                                                     how: str) -> None:
    audit = tmp_path / "audit.log"
    service = spawn("service", env={**agent_env, "COUNTER_FILE": str(tmp_path / "counter"),
                                    "PRODBUG_AUDIT_LOG": str(audit)})
    service.facts["counter"] = str(tmp_path / "counter")
    cluster.pod("api-0", service)
    child = pexpect.spawn(sys.executable, ["-m", "prodbug", "pdb", "kube://api-0", "--thread",
                                           "worker"], env=cluster.env, encoding="utf-8",
                          timeout=60)
    try:
        child.expect(PROMPT)
        if how == "ctrl-c":
            # The terminal's Ctrl-C reaches prodbug only: the tunnel stays up for it to
            # close the session in the service, and then goes.
            child.sendintr()
            child.expect("detached")
            child.expect(pexpect.EOF)
        else:
            child.kill(signal.SIGKILL)
        assert cluster.none_left()
        assert still_counting(service)
    finally:
        child.close(force=True)
    if how == "ctrl-c":
        def closed_by_the_operator() -> bool:
            sessions = [json.loads(line) for line in audit.read_text().splitlines()
                        if '"session"' in line]
            return any(r.get("event") == "session"
                       and r.get("outcome", "").startswith("closed by the operator")
                       for r in sessions)
        assert wait_for(closed_by_the_operator, timeout=10), audit.read_text()


@pytest.mark.parametrize("case", ["no_kubectl", "no_pod", "no_cluster", "no_agent"])
def test_failures_are_one_clear_line(spawn, agent_env, cluster, tmp_path: Path,
                                     case: str) -> None:
    env = dict(cluster.env)
    target = "kube://default/api-0"
    if case == "no_kubectl":
        (tmp_path / "empty").mkdir()
        env["PATH"] = str(tmp_path / "empty")
    elif case == "no_cluster":
        cluster.unreachable = True
        cluster.save()
    elif case == "no_agent":  # the pod runs, nothing listens on that port in it
        cluster.pod("api-0", spawn("service", env=agent_env))
        target = "kube://default/api-0:9999"
    done = run_cli("info", target, "--timeout", "3", env=env)
    expected = {"no_kubectl": (2, "kubectl is not on PATH: install it"),
                "no_pod": (3, 'kube://default/api-0: pods "api-0" not found'),
                "no_cluster": (3, "cannot reach the Kubernetes API: The connection to the "
                                  "server localhost:8080 was refused - did you specify the right "
                                  "host or port? (kubectl has no cluster configured"),
                # Accepted by kubectl, closed from the pod: to the client, not an agent (4),
                # or, when each try is slow to fail, no handshake in time (3).
                "no_agent": (done.returncode if done.returncode in (3, 4) else 4,
                             "nothing listens on port 9999 in the pod")}[case]
    assert (done.returncode, expected[1] in done.stderr) == (expected[0], True), done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == (2 if case == "no_agent" else 1), done.stderr  # + the client's own
    assert cluster.none_left()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no real kubectl on PATH")
def test_the_real_kubectl_without_a_cluster(base_env, tmp_path: Path, keys: Keys) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(  # a cluster on a port where nothing listens
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: "
        f"'https://127.0.0.1:{_free_port()}'}}\nusers:\n- name: u\n  user: {{token: x}}\n"
        f"contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n")
    done = run_cli("info", "kube://prod/api-0", "--timeout", "20",
                   env={**base_env, "KUBECONFIG": str(config),
                        "PRODBUG_CLIENT_SECRET_KEY": str(keys.observer),
                        "PRODBUG_SERVER_KEY": str(keys.server_public)})
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.splitlines()
    assert "kube://prod/api-0: cannot reach the Kubernetes API: The connection to the server" \
        in line


def test_expand_selector(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PATH", "FAKE_KUBECTL_CLUSTER", "FAKE_KUBECTL_PIDS"):
        monkeypatch.setenv(key, cluster.env[key])
    cluster.pod("api-1", namespace="prod", labels={"app": "api"})
    cluster.pod("api-0", namespace="prod", labels={"app": "api", "tier": "web"})
    cluster.pod("db-0", namespace="prod", labels={"app": "db"})
    cluster.pod("api-2", namespace="prod", labels={"app": "api"}, phase="Pending")
    cluster.pod("api-0", namespace="default", labels={"app": "api"})
    assert expand_selector("kube://prod/label:app=api", 10) == [
        "kube://prod/api-0:7661", "kube://prod/api-1:7661"]
    assert expand_selector("label:app=api,tier!=web:9000", 10) == ["kube://default/api-0:9000"]
    with pytest.raises(TargetUnreachable, match="no pods match app=web in namespace prod"):
        expand_selector("kube://prod/label:app=web", 10)
    with pytest.raises(TargetUnreachable, match=r"match app=api,tier=x.*none is Running"):
        cluster.pod("api-3", namespace="x", labels={"app": "api", "tier": "x"}, phase="Pending")
        expand_selector("kube://x/label:app=api,tier=x", 10)


def test_a_tunnel_opened_from_a_thread_outlives_the_thread(cluster,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Linux ties PR_SET_PDEATHSIG to the thread that started kubectl, not the process."""
    for key in ("PATH", "FAKE_KUBECTL_CLUSTER", "FAKE_KUBECTL_PIDS"):
        monkeypatch.setenv(key, cluster.env[key])
    with socket.socket() as pod:
        pod.bind(("127.0.0.1", 0))
        pod.listen(1)
        cluster.pods.append({"namespace": "default", "name": "echo", "phase": "Running",
                             "ports": {"7661": pod.getsockname()[1]}})
        cluster.save()
        opened: list[Any] = []
        native: list[int] = []

        def opener() -> None:
            native.append(threading.get_native_id())
            opened.append(open_kube(PbTarget("", scheme="kube", address="echo"), 10))

        thread = threading.Thread(target=opener)
        thread.start()
        thread.join()
        (forward,) = opened
        try:
            assert wait_for(lambda: not Path(f"/proc/self/task/{native[0]}").exists())
            host, port = forward.endpoint.removeprefix("tcp://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as client:
                server, _ = pod.accept()
                with server:
                    client.sendall(b"ping")
                    assert server.recv(4) == b"ping"
            assert forward.proc.poll() is None
        finally:
            forward.close()
    assert cluster.none_left()


def test_addresses() -> None:
    from prodbug.errors import ConfigError
    from prodbug.transport.kube import KubeTarget, is_selector, parse_kube

    assert parse_kube("kube://api-0") == KubeTarget(None, "api-0", 7661)
    assert parse_kube("prod/api-0:9000") == KubeTarget("prod", "api-0", 9000)
    assert parse_kube("deployment/api") == KubeTarget(None, "deployment/api", 7661)
    assert parse_kube("prod/svc/api:81") == KubeTarget("prod", "svc/api", 81)
    assert is_selector("kube://prod/label:app.kubernetes.io/name=api:7000")
    assert not is_selector("kube://prod/api-0")
    for bad in ("--kubeconfig=/x", "prod/-x", "a/b/c/d", "api-0:99999", "Api"):
        with pytest.raises(ConfigError):
            parse_kube(bad)




def test_a_label_selector_is_a_fleet(cluster: Cluster, spawn: Any,
                                     agent_env: dict[str, str]) -> None:
    agents = [spawn("member", env=agent_env) for _ in range(3)]
    for n, agent in enumerate(agents):
        cluster.pod(f"api-{n}", agent, labels={"app": "api" if n < 2 else "worker"})
    done = run_cli("stacks", "kube://default/label:app=api", "--json", "--cpu-interval", "0",
                   env=cluster.env)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["targets"]
    assert [e["target"] for e in entries] == ["kube://default/api-0:7661",
                                              "kube://default/api-1:7661"]
    assert [e["result"]["pid"] for e in entries] == [agents[0].pid, agents[1].pid]
    assert cluster.none_left()


def test_a_missing_key_starts_no_kubectl(cluster: Cluster) -> None:
    env = {k: v for k, v in cluster.env.items() if k != "PRODBUG_CLIENT_SECRET_KEY"}
    env["HOME"] = str(cluster.bin.parent)  # no ~/.config/prodbug/client.key_secret either
    done = run_cli("stacks", "kube://default/api-0", env=env)
    assert done.returncode == 2 and "secret key" in done.stderr, done.stderr
    assert cluster.started() == []
