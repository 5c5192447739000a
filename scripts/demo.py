"""Run the demo service with the agent on CURVE TCP, make one request hang, show the stacks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prodbug(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prodbug", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="prodbug-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODBUG_")}
    env["PRODBUG_RUNTIME_DIR"] = str(work / "run")
    service = None
    try:
        print("$ prodbug keygen --name server; prodbug keygen --name operator")
        for name in ("server", "operator"):
            made = prodbug("keygen", "--name", name, "--dir", str(work / "keys"), env=env)
            if made.returncode:
                sys.stderr.write(made.stderr)
                return 1
        (work / "authorized").mkdir()
        shutil.copy(work / "keys" / "operator.key", work / "authorized")

        service_env = {**env, "PRODBUG_LISTEN": "tcp://127.0.0.1:0",
                       "PRODBUG_SERVER_SECRET_KEY": str(work / "keys" / "server.key_secret"),
                       "PRODBUG_AUTHORIZED_KEYS": str(work / "authorized")}
        service = subprocess.Popen(
            [sys.executable, str(ROOT / "agent" / "examples" / "demo_service.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=service_env)
        assert service.stdout is not None
        line = service.stdout.readline()
        if not line.startswith("READY "):
            print(f"demo service failed to start: {line}", file=sys.stderr)
            return 1
        facts = json.loads(line[len("READY "):])
        print(f"demo service pid {facts['pid']}, http {facts['http']}, "
              f"agent {facts['prodbug']} (CURVE)")

        # One request that will hang on the ledger lock (the client gives up after 60 s).
        def hanging_request() -> None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(facts["http"] + "/charge/acct-42", timeout=60)
        threading.Thread(target=hanging_request, daemon=True).start()

        client_env = {**env, "PRODBUG_CLIENT_SECRET_KEY": str(work / "keys" /
                                                              "operator.key_secret"),
                      "PRODBUG_SERVER_KEY": str(work / "keys" / "server.key")}
        target = facts["prodbug"].removeprefix("tcp://")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the request is seen waiting
            probe = prodbug("stacks", target, "--json", "--cpu-interval", "0", env=client_env)
            if probe.returncode == 0 and '"function": "charge"' in probe.stdout:
                break
            time.sleep(0.1)
        print(f"\n$ prodbug stacks {target}\n")
        result = prodbug("stacks", target, env=client_env)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    finally:
        if service is not None:
            if service.stdin is not None:
                service.stdin.close()
            try:
                service.wait(10)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(10)
            if service.stdout is not None:
                service.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
