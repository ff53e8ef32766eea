"""Shared helpers for framepipe's Python tests and tools: start a real `framepipe serve` as a child
process on loopback port 0, learn its ports from its log, watch its memory, CPU and threads, and
stop it with SIGTERM as an operator would.

Imported by tests/security, tests/prometheus_integration.py, tests/deploy, scripts/soak.py and
clients/python/tests; no test framework needed here.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]


def framepipe_binary() -> str:
    path = os.environ.get("FRAMEPIPE_BINARY") or str(REPO / "build/default/bin/framepipe")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"framepipe binary not found at {path}: build it or set FRAMEPIPE_BINARY")
    return path


def log_port(text: str, event: str, key: str = "port") -> Optional[int]:
    """The `key=` number of the first `event=<event>` line of a framepipe log, if any."""
    m = re.search(rf"event={event} .*?\b{key}=(\d+)", text)
    return int(m.group(1)) if m else None


def proc_status(pid: int, field: str) -> int:
    """A kB (or count) field of /proc/<pid>/status: VmRSS, VmHWM, Threads."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class FramepipeServer:
    """`framepipe serve` on 127.0.0.1:0 with `args` (plus a metrics port unless given)."""

    def __init__(self, args: Sequence[str] = (), prefix: Sequence[str] = (),
                 env: Optional[dict] = None, listen: str = "127.0.0.1:0",
                 workers: int = 2, start_timeout: float = 30):
        self.log = tempfile.NamedTemporaryFile(prefix="framepipe-test-", suffix=".log",
                                               delete=False)
        argv: List[str] = [*prefix, framepipe_binary(), "serve", "--listen", listen,
                           "--workers", str(workers), "--backend", "cpu"]
        if "--metrics" not in args:
            argv += ["--metrics", "127.0.0.1:0"]
        argv += list(args)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.time() + start_timeout
        self.port = self.metrics_port = None
        while time.time() < deadline:
            text = self.text()
            self.port = log_port(text, "server_started")
            if self.port:
                self.metrics_port = log_port(text, "metrics_listening")
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"framepipe serve exited {self.proc.returncode}: {text}")
            time.sleep(0.02)
        if not self.port:
            self.kill()
            raise RuntimeError("framepipe serve did not start in time")
        self.target = f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def rss_mib(self) -> float:
        return proc_status(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return proc_status(self.pid, "VmHWM") / 1024

    def reset_peak(self) -> None:
        """Restarts VmHWM from the current RSS (so peak_rss_mib() measures from now on)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def threads(self) -> int:
        return proc_status(self.pid, "Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the drain), then the exit code; SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def reference_luma(path) -> dict:
    """pts -> mean BT.601 luma (as OpenCV's BGR2GRAY) of every picture of a video file, decoded
    independently of framepipe (PyAV, then OpenCV): what the video tests compare results with."""
    import av
    import cv2

    out = {}
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out[f.pts] = float(cv2.cvtColor(f.to_ndarray(format="bgr24"),
                                            cv2.COLOR_BGR2GRAY).mean())
    return out


def avcc_has_idr(packet: bytes) -> bool:
    """Whether an H.264 packet in MP4 form (NAL units after 4-byte lengths) holds an IDR slice:
    a keyframe, from the bitstream itself."""
    i = 0
    while i + 4 < len(packet):
        if packet[i + 4] & 0x1F == 5:
            return True
        i += 4 + int.from_bytes(packet[i:i + 4], "big")
    return False
