"""A Debug Adapter Protocol client that speaks exactly as VS Code does (for the tests)."""

from __future__ import annotations

import json
import socket
from typing import Any


class DapClient:
    def __init__(self, port: int, timeout: float = 60) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.seq = 0
        self.backlog: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, **arguments: Any) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command,
                           "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _read(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the adapter closed the connection")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the adapter closed the connection")
            rest += chunk
        self.buf = rest[length:]
        message: dict[str, Any] = json.loads(rest[:length])
        return message

    def _wait(self, match: Any) -> dict[str, Any]:
        for i, message in enumerate(self.backlog):
            if match(message):
                return self.backlog.pop(i)
        while True:
            message = self._read()
            if match(message):
                return message
            self.backlog.append(message)

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a request and return its (successful) response's body."""
        seq = self.send(command, **arguments)
        response = self.response(seq)
        if not response.get("success"):
            raise AssertionError(f"{command} failed: {response}")
        body: dict[str, Any] = response.get("body") or {}
        return body

    def response(self, seq: int) -> dict[str, Any]:
        return self._wait(lambda m: m.get("type") == "response" and m.get("request_seq") == seq)

    def event(self, name: str) -> dict[str, Any]:
        return self._wait(lambda m: m.get("type") == "event" and m.get("event") == name)

    def attach(self, breakpoints: dict[str, list[int]]) -> dict[str, Any]:
        """initialize, attach, setBreakpoints, configurationDone: VS Code's order."""
        capabilities = self.request("initialize", clientID="vscode", adapterID="debugpy",
                                    pathFormat="path", linesStartAt1=True,
                                    columnsStartAt1=True, supportsVariableType=True)
        attach = self.send("attach", justMyCode=False)
        self.event("initialized")
        for path, lines in breakpoints.items():
            self.set_breakpoints(path, lines)
        self.request("configurationDone")
        response = self.response(attach)
        if not response.get("success"):
            raise AssertionError(f"attach failed: {response}")
        return capabilities

    def set_breakpoints(self, path: str, lines: list[int]) -> list[dict[str, Any]]:
        body = self.request("setBreakpoints", source={"path": path},
                            breakpoints=[{"line": n} for n in lines])
        result: list[dict[str, Any]] = body["breakpoints"]
        return result

    def attach_as(self, config: dict[str, Any],
                  breakpoints: dict[str, list[int]]) -> dict[str, Any]:
        """``attach`` with what a launch.json attach configuration says, as VS Code sends it
        (every field of the configuration in the attach request's arguments)."""
        capabilities = self.request("initialize", clientID="vscode", adapterID="debugpy",
                                    pathFormat="path", linesStartAt1=True,
                                    columnsStartAt1=True, supportsVariableType=True)
        attach = self.send("attach", **config)
        self.event("initialized")
        for path, lines in breakpoints.items():
            self.set_breakpoints(path, lines)
        self.request("configurationDone")
        response = self.response(attach)
        if not response.get("success"):
            raise AssertionError(f"attach failed: {response}")
        return capabilities

    def top_frame(self, thread: int) -> dict[str, Any]:
        frames: list[dict[str, Any]] = self.request(
            "stackTrace", threadId=thread, startFrame=0, levels=20)["stackFrames"]
        return frames[0]
