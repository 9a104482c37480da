"""A real `llm-backbones serve` in a subprocess, for the server tests and benchmarks/bench_serve.py.

`ServerProcess.start(checkpoint, *flags)` runs `python -m llm_backbones serve CHECKPOINT --vision-depth 3
--port <free loopback port> *flags`, its output in a log file (named in every failure), and `wait_ready()`
polls `/health`. Requests go through `urllib` (the standard library), bytes in, (status, bytes) out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvla_reference_spec as spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    url: str, body: bytes | None = None, content_type: str | None = "application/json", timeout: float = 120
) -> tuple[int, bytes]:
    """(status, body) of a GET (body None) or POST to `url`; HTTP errors are answers too."""
    headers = {"Content-Type": content_type} if content_type and body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, checkpoint: Path, *flags: str, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        log = Path(tempfile.mkstemp(prefix="llm-backbones-serve-", suffix=".log")[1])
        command = [sys.executable, "-m", "llm_backbones", "serve", str(checkpoint)]
        command += ["--vision-depth", str(spec.VISION_DEPTH), "--port", str(port), *flags]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
        return cls(proc, f"http://127.0.0.1:{port}", log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if request(self.url + "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {timeout} s:\n{self.output()}")

    def health(self) -> dict[str, Any]:
        status, body = request(self.url + "/health", timeout=30)
        assert status == 200, body
        return json.loads(body)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
