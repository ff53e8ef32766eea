#!/usr/bin/python3
"""What each defence buys: every hostile-client attack of tests/security, once, against servers
in several configurations, measured (not asserted) - server alive, peak RSS growth, health-check
latency from another client, CPU spent, what the attacker was told. Not in CI.

usage: scripts/attack-matrix.sh [--old path/to/old/framepipe] [--only NAME]
Configurations: "guard off" (gRPC 1.51's own listener with the gRPC knobs and the service's
own limits), "default" (the front door), and "old" (another binary, e.g. an earlier build,
when --old is given).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "security"))

from attack import (FREE_FRAMES, H2Client, NonReader, Prober, config_msg,  # noqa
                    free_frame_flood, grpc_headers, grpc_message, gzip_bomb, header_flood,
                    health_check, honest_stream, open_watch_calls, png_of_zeros, raw_frame_msg,
                    unread_message_flood)
from framepipe_testing import FramepipeServer  # noqa: E402


_HELP = {}


def supported(binary, args):
    """`args` without the flags `binary` does not have (an older build), with their values."""
    import subprocess
    if binary not in _HELP:
        _HELP[binary] = subprocess.run([binary, "serve", "--help"], capture_output=True,
                                       text=True).stdout
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a.startswith("--") and a not in _HELP[binary]:
            skip = i + 1 < len(args) and not args[i + 1].startswith("--")
            continue
        out.append(a)
    return out


def start(binary, args, prefix=()):
    args = supported(binary, list(args))
    env = dict(os.environ, FRAMEPIPE_BINARY=binary)
    old = os.environ.get("FRAMEPIPE_BINARY")
    os.environ["FRAMEPIPE_BINARY"] = binary
    try:
        return FramepipeServer(list(args), prefix=list(prefix), env=env)
    finally:
        if old is None:
            del os.environ["FRAMEPIPE_BINARY"]
        else:
            os.environ["FRAMEPIPE_BINARY"] = old


def health_summary(results):
    bad = [r for r in results if not r[0]]
    worst = max((r[1] for r in results), default=0)
    return f"health {len(results) - len(bad)}/{len(results)} ok, slowest {worst:.2f}s"


def m_refused_cancel(binary, extra):
    s = start(binary, ["--max-streams", "1", *extra])
    h = H2Client(s.port)
    h.conn.send_headers(1, grpc_headers())
    h.conn.send_data(1, grpc_message(config_msg()))
    h.flush()
    h.pump(0.2)
    n = 0
    for n in range(1, 101):
        try:
            c = H2Client(s.port, timeout=2)
            c.conn.send_headers(1, grpc_headers())
            c.conn.reset_stream(1)
            c.flush()
            c.pump(0.01)
            c.close()
        except OSError:
            break
        if not s.alive():
            break
    time.sleep(0.3)
    out = f"alive after {n} refused+cancelled calls" if s.alive() else \
        f"DIED (exit {s.proc.returncode}) after {n} refused+cancelled calls"
    s.close()
    return out


def m_rapid_reset(binary, extra):
    s = start(binary, extra)
    prober = Prober(s.target)
    c = H2Client(s.port)
    sent, t0 = 0, time.time()
    while not c.closed and time.time() - t0 < 3 and s.alive():
        sent += c.open_and_reset(100)
        c.pump(0.001)
    results = prober.stop()
    lines = s.text().count("event=stream_")
    g = c.goaway()
    out = (f"{'alive' if s.alive() else 'DIED'}; {sent} resets in {time.time() - t0:.1f}s, "
           f"{'GOAWAY ' + str(g.error_code) if g else 'no GOAWAY'}; {lines} stream log lines; "
           f"{health_summary(results)}")
    s.close()
    return out


def m_gzip_bomb(binary, extra):
    s = start(binary, extra)
    bomb = gzip_bomb(1 << 30)
    s.reset_peak()
    base = s.rss_mib()
    c = H2Client(s.port)
    c.conn.send_headers(1, grpc_headers(extra=[("grpc-encoding", "gzip")]))
    c.conn.send_data(1, grpc_message(config_msg()))
    t0 = time.time()
    c.send_until_answered(1, grpc_message(bomb, compressed=True), seconds=20, wait=20)
    t = c.trailers(1) or {}
    out = (f"status {t.get('grpc-status', '-')} after {time.time() - t0:.2f}s, peak RSS "
           f"+{s.peak_rss_mib() - base:.0f} MiB")
    s.close()
    return out


def m_header_flood(binary, extra):
    s = start(binary, extra)
    s.reset_peak()
    base = s.rss_mib()
    prober = Prober(s.target, period=0.2)
    header_flood(s.port)  # 32 connections x 20 MB header blocks for 4 s
    during = prober.stop()
    after = Prober(s.target, period=0.2)
    time.sleep(2)
    after_results = after.stop()
    out = (f"peak RSS +{s.peak_rss_mib() - base:.0f} MiB ({s.peak_rss_mib():.0f}); during: "
           f"{health_summary(during)}; 2 s after: {health_summary(after_results)}")
    s.close()
    return out


def m_emfile(binary, extra):
    s = start(binary, ["--max-connections", "1000", *extra], prefix=["prlimit", "--nofile=128:128"])
    socks = []
    for _ in range(300):
        try:
            socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=1))
        except OSError:
            break
    time.sleep(0.5)
    for so in socks:
        so.close()
    ok, took, why = False, 0.0, ""
    t0 = time.time()
    while time.time() - t0 < 5 and not ok:
        ok, took, why = health_check(s.target, timeout=1)
    out = f"{len(socks)} connections opened; afterwards: {'accepts again' if ok else 'NO ACCEPT (' + why + ')'}"
    s.close()
    return out


def m_stalled(binary, extra):
    s = start(binary, extra)
    conns = []
    for _ in range(3):
        c = H2Client(s.port, source="127.0.0.2")
        for k in range(100):
            c.conn.send_headers(1 + 2 * k, grpc_headers())
        c.flush()
        conns.append(c)
    for c in conns:
        c.pump(0.5)
    ok, why = honest_stream(s.target)
    out = "an honest client gets in" if ok else f"honest client LOCKED OUT: {why[:80]}"
    s.close()
    return out


def m_non_reader(binary, extra):
    s = start(binary, extra)

    def in_flight():
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics",
                                      timeout=5).read().decode()
        return int(float(text.split("\nframepipe_in_flight ")[1].split()[0]))

    a = NonReader(s.port, streams=4, frames=300)
    a.push(5)
    held = in_flight()
    t0 = time.time()
    ok, why = honest_stream(s.target, frames=10, timeout=10)
    out = (f"non-reader holds {held} credits; honest client "
           + (f"served in {time.time() - t0:.2f}s" if ok else f"STARVED: {why[:60]}"))
    a.close()
    s.close()
    return out


def m_watch_flood(binary, extra):
    s = start(binary, extra)
    base = s.rss_mib()
    conns = open_watch_calls(s.port, connections=250, pump=0.05)
    time.sleep(1)
    refused = sum(1 for c in conns for e in c.events if type(e).__name__ == "StreamReset")
    ok, _, _ = health_check(s.target)
    out = (f"RSS +{s.rss_mib() - base:.0f} MiB, {refused} of 25000 refused, "
           f"health {'answered' if ok else 'FAILED'}")
    for c in conns:
        c.close()
    s.close()
    return out


def m_message_flood(binary, extra):
    outs = []
    for name, path in (("Watch", "/grpc.health.v1.Health/Watch"),
                       ("reflection", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")):
        s = start(binary, extra)
        base = s.rss_mib()
        s.reset_peak()
        clients = unread_message_flood(s.port, path, seconds=4)
        reset = sum(1 for c in clients for e in c.events if type(e).__name__ == "StreamReset")
        ok, _, _ = health_check(s.target)
        outs.append(f"{name}: RSS +{s.peak_rss_mib() - base:.0f} MiB, {reset} of 64 calls reset"
                    + ("" if ok else ", health FAILED"))
        for c in clients:
            c.close()
        s.close()
    return "; ".join(outs)


def m_free_frames(binary, extra):
    outs = []
    for kind in sorted(FREE_FRAMES):
        s = start(binary, extra)
        base = s.rss_mib()
        s.reset_peak()
        c, sent = free_frame_flood(s.port, kind, seconds=8)
        g = c.goaway()
        outs.append(f"{kind}: {sent} frames, RSS +{s.peak_rss_mib() - base:.0f} MiB, "
                    + (f"GOAWAY {g.error_code}" if g else "no GOAWAY")
                    + ("" if s.alive() else ", server DIED"))
        c.close()
        s.close()
    return "; ".join(outs)


def m_slowloris(binary, extra):
    s = start(binary, extra)
    socks = []
    for _ in range(40):
        so = socket.create_connection(("127.0.0.1", s.metrics_port), timeout=2)
        so.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(so)
    time.sleep(0.2)
    t0 = time.time()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).read()
        out = f"scrape answered in {time.time() - t0:.2f}s"
    except OSError as e:
        out = f"scrape FAILED after {time.time() - t0:.1f}s ({e})"
    s.close()
    return out


def m_malformed(binary, extra):
    s = start(binary, extra)
    c = H2Client(s.port)
    c.conn.send_headers(1, grpc_headers())
    body = grpc_message(config_msg()) + grpc_message(raw_frame_msg(1)) + \
        grpc_message(b"\xff\xff\xff\xff\x0f") + grpc_message(raw_frame_msg(2))
    c.send_data(1, body, end_stream=True)
    c.pump(5, until=lambda: c.trailers(1) is not None)
    t = c.trailers(1) or {}
    out = f"status {t.get('grpc-status', '-')} {t.get('grpc-message', '')[:60]!r}, " \
          f"{len(c.messages(1))} result(s)"
    s.close()
    return out


def m_huge_prefix(binary, extra):
    s = start(binary, extra)
    s.reset_peak()
    base = s.rss_mib()
    c = H2Client(s.port)
    c.conn.send_headers(1, grpc_headers())
    c.send_data(1, grpc_message(config_msg()))
    lie = grpc_message(b"\0" * (64 << 20), declared=0xFFFFFFFF)
    off = c.send_until_answered(1, lie, seconds=10, wait=5, step=0.01)
    t = c.trailers(1) or {}
    out = (f"status {t.get('grpc-status', '-')} after {off >> 20} MiB sent, peak RSS "
           f"+{s.peak_rss_mib() - base:.0f} MiB")
    s.close()
    return out


def m_png_bomb(binary, extra):
    import grpc
    from framepipe.v1 import framepipe_pb2 as pb
    from framepipe.v1 import framepipe_pb2_grpc as pbg
    s = start(binary, extra)
    cpu0 = s.cpu_seconds()
    png = png_of_zeros(64, 64, inflated=900 << 20)

    def gen():
        yield pb.ProcessRequest(config=pb.StreamConfig(stream_id="bomb"))
        yield pb.ProcessRequest(frame=pb.Frame(seq=1, encoded=png))

    ch = grpc.insecure_channel(s.target)
    r = list(pbg.FramePipelineStub(ch).Process(gen(), timeout=120))
    out = (f"{len(png) >> 10} KiB PNG inflating to 900 MiB: {pb.FrameStatus.Name(r[0].status)} "
           f"after {s.cpu_seconds() - cpu0:.2f} s of server CPU")
    s.close()
    return out


MEASURES = {
    "1 refused+cancel": m_refused_cancel,
    "2 rapid reset": m_rapid_reset,
    "3 gzip bomb": m_gzip_bomb,
    "4 header flood": m_header_flood,
    "5 EMFILE": m_emfile,
    "6 stalled streams": m_stalled,
    "6 results never read": m_non_reader,
    "6 250x100 health Watch": m_watch_flood,
    "6 empty messages to unread calls": m_message_flood,
    "2 frames that cost no window": m_free_frames,
    "7 metrics slowloris": m_slowloris,
    "8 malformed message": m_malformed,
    "8 4 GiB prefix": m_huge_prefix,
    "9 PNG bomb": m_png_bomb,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="", help="another framepipe binary to measure too")
    ap.add_argument("--only", default="", help="measures whose name contains this")
    args = ap.parse_args()
    binary = os.environ.get("FRAMEPIPE_BINARY") or str(ROOT / "build/default/bin/framepipe")
    configs = []
    if args.old:
        configs.append(("old", args.old, []))
    configs += [("guard off", binary, ["--guard", "off"]), ("default", binary, [])]
    for name, fn in MEASURES.items():
        if args.only and args.only not in name:
            continue
        for cname, b, extra in configs:
            try:
                res = fn(b, extra)
            except Exception as e:  # a server that dies mid-measure is a finding too
                res = f"ERROR {type(e).__name__}: {e}"[:160]
            print(f"{name:22s} | {cname:9s} | {res}", flush=True)


if __name__ == "__main__":
    main()
