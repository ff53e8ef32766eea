#!/usr/bin/python3
"""Attack-mix soak (not in CI): one `framepipe serve`, honest clients streaming all along, and,
after an unattacked baseline, every hostile-client attack of tests/security running at once in
rotation for the rest of the time. Reports honest throughput and p99 latency attacked vs
unattacked, server RSS / file descriptors / threads over time, and whether every honest frame was
answered in order.

usage: scripts/attack-soak.sh [--minutes 10] [--baseline-share 0.2] [--csv trend.csv] [--only a,b]
       (the shell wrapper sets PYTHONPATH and FRAMEPIPE_BINARY)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "security"))

from attack import (FREE_FRAMES, H2Client, NonReader, config_msg,  # noqa: E402
                    free_frame_flood, grpc_headers, grpc_message, gzip_bomb, header_flood_frames,
                    png_of_zeros, raw_frame_msg, unread_message_flood)
from framepipe_testing import FramepipeServer, framepipe_binary  # noqa: E402


class Honest:
    """Honest clients: `framepipe stream` runs back to back (paced synthetic JPEG video), each
    checking order and completeness itself; their reports give throughput and latency."""

    def __init__(self, target: str, streams: int, fps: int):
        self.target, self.streams, self.fps = target, streams, fps
        self.runs = []  # (phase, report dict, exit code)
        self.phase = "baseline"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                report = f.name
            phase = self.phase
            p = subprocess.run([framepipe_binary(), "stream", "--target", self.target,
                                "--streams", str(self.streams), "--frames", str(self.fps * 10),
                                "--fps", str(self.fps), "--size", "640x480", "--no-progress",
                                "--report", report, "--timeout", "120"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.runs.append((phase, json.loads(Path(report).read_text()), p.returncode))
            except (OSError, ValueError):
                self.runs.append((phase, {}, p.returncode))
            os.unlink(report)

    def stop(self):
        self._stop.set()
        self._thread.join()


def attack_rapid_reset(port):
    c = H2Client(port, timeout=3)
    while not c.closed:
        c.open_and_reset(100)
        c.pump(0.001)
    c.close()


def attack_header_flood(port):
    flood = header_flood_frames(1, 8 << 20)
    c = H2Client(port, timeout=3)
    for off in range(0, len(flood), 1 << 20):
        c.send_raw(flood[off:off + (1 << 20)])
    c.close()


def attack_stalled_streams(port):
    c = H2Client(port, source="127.0.0.2", timeout=3)
    for k in range(100):
        c.conn.send_headers(1 + 2 * k, grpc_headers())
    c.flush()
    c.pump(3)
    c.close()


def attack_non_reader(port):
    """Four streams asking for a window of 300 whose results are never read."""
    a = NonReader(port, streams=4, frames=300)
    a.push(4)
    a.close()


def attack_message_flood(port):
    """Empty messages to calls whose handler reads one (Watch) or is blocked (reflection)."""
    path = random.choice(["/grpc.health.v1.Health/Watch",
                          "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"])
    for c in unread_message_flood(port, path, seconds=3, connections=2, calls=8):
        c.close()


def attack_free_frames(port):
    """WINDOW_UPDATEs, empty DATA frames or GOAWAYs on one connection until it is closed."""
    c, _ = free_frame_flood(port, random.choice(sorted(FREE_FRAMES)), seconds=3)
    c.close()


def attack_gzip_bomb(port, bomb=[]):
    if not bomb:
        bomb.append(gzip_bomb(256 << 20))
    c = H2Client(port, timeout=3)
    c.conn.send_headers(1, grpc_headers())
    c.conn.send_data(1, grpc_message(config_msg()))
    c.send_data(1, grpc_message(bomb[0], compressed=True))
    c.pump(1, until=lambda: c.trailers(1) is not None)
    c.close()


def attack_malformed(port):
    c = H2Client(port, timeout=3)
    c.conn.send_headers(1, grpc_headers())
    c.send_data(1, grpc_message(config_msg()) + grpc_message(raw_frame_msg(1)) +
                grpc_message(b"\xff\xff\xff\xff\x0f"), end_stream=True)
    c.pump(2, until=lambda: c.trailers(1) is not None)
    c.close()


def attack_huge_prefix(port):
    c = H2Client(port, timeout=3)
    c.conn.send_headers(1, grpc_headers())
    c.send_data(1, grpc_message(config_msg()) + grpc_message(b"\0" * 100000, declared=0xFFFFFFFF))
    c.pump(1, until=lambda: c.trailers(1) is not None)
    c.close()


def attack_png_bombs(port, pngs=[]):
    if not pngs:
        pngs.append(png_of_zeros(64, 64, inflated=900 << 20))
        pngs.append(png_of_zeros(4096, 4096, color=True))
    c = H2Client(port, timeout=3)
    c.conn.send_headers(1, grpc_headers())
    body = grpc_message(config_msg())
    for i, p in enumerate(pngs):
        from framepipe.v1 import framepipe_pb2 as pb
        body += grpc_message(pb.ProcessRequest(frame=pb.Frame(seq=i + 1, encoded=p))
                             .SerializeToString())
    c.send_data(1, body, end_stream=True)
    c.pump(10, until=lambda: c.trailers(1) is not None)
    c.close()


def attack_connection_flood(port):
    socks = []
    for _ in range(300):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            break
    time.sleep(1)
    for s in socks:
        s.close()


def attack_metrics_slowloris(metrics_port):
    socks = []
    for _ in range(40):
        try:
            s = socket.create_connection(("127.0.0.1", metrics_port), timeout=1)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            break
    time.sleep(3)
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--baseline-share", type=float, default=0.2)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--attackers", type=int, default=4)
    ap.add_argument("--csv", default="")
    ap.add_argument("--only", default="",
                    help="comma-separated attack names to run (default: all of them)")
    args = ap.parse_args()

    server = FramepipeServer(["--max-memory-mb", "1024"])
    print(f"server on {server.target}, metrics on {server.metrics_port}; "
          f"{args.minutes} min, {args.baseline_share:.0%} unattacked baseline", flush=True)
    attacks = {
        "rapid_reset": lambda: attack_rapid_reset(server.port),
        "header_flood": lambda: attack_header_flood(server.port),
        "stalled_streams": lambda: attack_stalled_streams(server.port),
        "non_reader": lambda: attack_non_reader(server.port),
        "message_flood": lambda: attack_message_flood(server.port),
        "free_frames": lambda: attack_free_frames(server.port),
        "gzip_bomb": lambda: attack_gzip_bomb(server.port),
        "malformed": lambda: attack_malformed(server.port),
        "huge_prefix": lambda: attack_huge_prefix(server.port),
        "png_bombs": lambda: attack_png_bombs(server.port),
        "connection_flood": lambda: attack_connection_flood(server.port),
        "metrics_slowloris": lambda: attack_metrics_slowloris(server.metrics_port),
    }
    if args.only:
        unknown = [a for a in args.only.split(",") if a not in attacks]
        if unknown:
            ap.error(f"unknown attack(s) {unknown}; known: {', '.join(attacks)}")
        attacks = {k: v for k, v in attacks.items() if k in args.only.split(",")}
    counts = {k: 0 for k in attacks}
    errors = {k: 0 for k in attacks}
    trend = []
    end = time.time() + args.minutes * 60
    attack_from = time.time() + args.minutes * 60 * args.baseline_share
    honest = Honest(server.target, args.streams, args.fps)
    attacking = threading.Event()
    done = threading.Event()

    def attacker(seed):
        rng = random.Random(seed)
        names = list(attacks)
        while not done.is_set():
            if not attacking.is_set():
                time.sleep(0.2)
                continue
            name = rng.choice(names)
            try:
                attacks[name]()
            except Exception:  # the server closing on an attacker is the point
                errors[name] += 1
            counts[name] += 1

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True)
               for i in range(args.attackers)]
    for t in threads:
        t.start()
    t0 = time.time()
    while time.time() < end and server.alive():
        if time.time() >= attack_from and not attacking.is_set():
            honest.phase = "attacked"
            attacking.set()
            print(f"{time.time() - t0:.0f}s: attacks start", flush=True)
        trend.append((time.time() - t0, "attacked" if attacking.is_set() else "baseline",
                      server.rss_mib(), server.fds(), server.threads()))
        time.sleep(1)
    done.set()
    for t in threads:
        t.join(timeout=30)
    honest.stop()
    # Once the attacks and the honest clients stop, every connection they opened must close: the
    # server's descriptors come back to where they started (a leaked connection would not).
    settled_fds, settle_s = None, 0.0
    if trend and server.alive():
        t_stop = time.time()
        while time.time() - t_stop < 30:
            settled_fds = server.fds()
            if settled_fds <= trend[0][3] + 8:
                break
            time.sleep(0.5)
        settle_s = time.time() - t_stop
    alive = server.alive()
    code = server.stop(timeout=60) if alive else server.proc.returncode

    def summary(phase):
        runs = [(r, c) for p, r, c in honest.runs if p == phase]
        fps = [r.get("frames_per_second", 0) for r, _ in runs if r]
        p99 = [r.get("latency", {}).get("p99_ms", 0) for r, _ in runs if r]
        bad = sum(1 for _, c in runs if c != 0)
        return runs, fps, p99, bad

    print("\n== honest clients (framepipe stream, exit 0 = every frame answered, in order)")
    result = {}
    for phase in ("baseline", "attacked"):
        runs, fps, p99, bad = summary(phase)
        med_fps = statistics.median(fps) if fps else 0
        med_p99 = statistics.median(p99) if p99 else 0
        result[phase] = (med_fps, med_p99, bad, len(runs))
        print(f"  {phase:9s} runs={len(runs)} incomplete/out-of-order={bad} "
              f"throughput median {med_fps:.1f} frames/s, p99 median {med_p99:.1f} ms")
    if result["baseline"][0] > 0:
        print(f"  attacked/baseline: throughput {result['attacked'][0] / result['baseline'][0]:.2f}x, "
              f"p99 {result['attacked'][1] / max(result['baseline'][1], 1e-9):.2f}x")
    print("\n== attacks run (errors = the server closed on the attacker)")
    for k in attacks:
        print(f"  {k:18s} {counts[k]:5d} (errors {errors[k]})")
    print("\n== server")
    rss = [r for _, _, r, _, _ in trend]
    fds = [f for _, _, _, f, _ in trend]
    thr = [t for _, _, _, _, t in trend]
    if trend:
        print(f"  RSS MiB start {rss[0]:.0f} max {max(rss):.0f} end {rss[-1]:.0f}; "
              f"fds start {fds[0]} max {max(fds)} end {fds[-1]}; "
              f"threads start {thr[0]} max {max(thr)} end {thr[-1]}")
    fds_back = settled_fds is not None and settled_fds <= trend[0][3] + 8
    if settled_fds is not None:
        print(f"  fds once attackers and clients stopped: {settled_fds} "
              f"({'back' if fds_back else 'NOT back'} within 8 of the start, {settle_s:.1f} s)")
    print(f"  alive to the end: {alive}; exit code after SIGTERM: {code}")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("t_s,phase,rss_mib,fds,threads\n")
            for row in trend:
                f.write(",".join(str(x) for x in row) + "\n")
        print(f"  trend: {args.csv}")
    ok = (alive and code == 0 and fds_back and result["baseline"][2] == 0 and
          result["attacked"][2] == 0)
    print("\nverdict:", "PASS" if ok else "FAIL")
    server.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
