"""Fixtures: a real `framepipe serve` on 127.0.0.1:0 (port read from its log)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[3]


def framepipe_binary() -> str:
    path = os.environ.get("FRAMEPIPE_BINARY") or str(REPO / "build/default/bin/framepipe")
    if not os.access(path, os.X_OK):
        pytest.fail(f"framepipe binary not found at {path}: build it or set FRAMEPIPE_BINARY")
    return path


class Server:
    def __init__(self, args: List[str]):
        self.log = tempfile.NamedTemporaryFile(prefix="framepipe-py-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(
            [framepipe_binary(), "serve", "--listen", "127.0.0.1:0", "--metrics", "",
             "--workers", "2", "--backend", "cpu", *args],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = self._wait_port()
        self.target = f"127.0.0.1:{self.port}"

    def _wait_port(self) -> int:
        deadline = time.time() + 30
        while time.time() < deadline:
            text = Path(self.log.name).read_text(errors="replace")
            m = re.search(r"event=server_started .*? port=(\d+)", text)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"framepipe serve exited {self.proc.returncode}: {text}")
            time.sleep(0.05)
        raise RuntimeError("framepipe serve did not start within 30 s")

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server([])
    yield s
    assert s.stop() == 0


@pytest.fixture
def make_server() -> Iterator:
    started: List[Server] = []

    def make(*args: str) -> Server:
        s = Server(list(args))
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
