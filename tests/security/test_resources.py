"""Hostile clients against the process' resources: file descriptors, the metrics endpoint, and
decode work (decode bombs)."""
from __future__ import annotations

import socket
import threading
import time
import urllib.request

from attack import H2Client, health_check, honest_stream


def connect_many(port: int, n: int):
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return socks


# Item 5: under a low open-files limit, EMFILE must not stop the listener for good.
def test_listener_accepts_again_after_running_out_of_descriptors(make_server):
    # A connection cap above what 128 descriptors allow, so accept really hits EMFILE.
    s = make_server("--max-connections", "1000", prefix=["prlimit", "--nofile=128:128"])
    socks = connect_many(s.port, 300)
    time.sleep(0.5)
    assert s.alive()
    for so in socks:
        so.close()
    # Once descriptors are free again, the listener takes new clients.
    deadline = time.time() + 10
    ok = False
    while time.time() < deadline and not ok:
        ok, _, why = health_check(s.target, timeout=2)
    assert ok, f"no health check answered after EMFILE: {why}\n{s.text()[-1500:]}"
    ok, why = honest_stream(s.target)
    assert ok, why
    assert "fd_limit" in s.text()
    assert s.stop() == 0


# Item 5: the connection cap refuses clearly: an HTTP/2 GOAWAY saying why.
def test_connection_cap_refuses_with_a_reason(make_server):
    s = make_server("--max-connections", "4")
    held = [H2Client(s.port) for _ in range(4)]
    for h in held:
        h.pump(0.1)
    extra = H2Client(s.port)
    extra.pump(2, until=lambda: extra.goaway() is not None or extra.closed)
    g = extra.goaway()
    assert g is not None, "the fifth connection was not told why"
    assert b"limit of 4 connections" in (g.additional_data or b""), g
    for h in held:
        h.close()
    time.sleep(0.3)
    ok, why = honest_stream(s.target)
    assert ok, why
    assert s.stop() == 0


# Item 5: the soft limit is raised to the hard limit at start.
def test_soft_file_limit_is_raised_to_the_hard_limit(make_server):
    s = make_server(prefix=["prlimit", "--nofile=256:4096"])
    with open(f"/proc/{s.pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    assert line.split()[3] == "4096", line
    assert s.stop() == 0


# Item 7: connections that send half a request and stall must not block /metrics.
def test_metrics_slowloris_does_not_block_a_scrape(make_server):
    s = make_server()
    stalled = []
    for _ in range(40):
        so = socket.create_connection(("127.0.0.1", s.metrics_port), timeout=5)
        so.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finished
        stalled.append(so)
    time.sleep(0.2)
    t0 = time.time()
    with urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=3) as r:
        body = r.read().decode()
    took = time.time() - t0
    assert "framepipe_frames_total" in body
    assert took < 3, took
    for so in stalled:
        so.close()
    assert s.stop() == 0


def send_frames(target: str, payloads, stream_id: str = "bomb", timeout: float = 120):
    """One stream of encoded frames; [(seq, status name, error)] back."""
    import grpc
    from framepipe.v1 import framepipe_pb2 as pb
    from framepipe.v1 import framepipe_pb2_grpc as pbg
    ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                ("grpc.use_local_subchannel_pool", 1)])
    try:
        def gen():
            yield pb.ProcessRequest(config=pb.StreamConfig(stream_id=stream_id, max_in_flight=4))
            for i, p in enumerate(payloads):
                yield pb.ProcessRequest(frame=pb.Frame(seq=i + 1, encoded=p))
        return [(r.seq, pb.FrameStatus.Name(r.status), r.error)
                for r in pbg.FramePipelineStub(ch).Process(gen(), timeout=timeout)]
    finally:
        ch.close()


# Item 9: a 64x64 PNG carrying megabytes of image data (a zlib bomb).
def test_png_decode_bombs_cost_nothing(make_server):
    from attack import png_of_zeros
    s = make_server()
    cpu0 = s.cpu_seconds()
    # 4 MiB of IDAT for 64x64 pixels: refused from the sizes alone, before any inflating.
    r = send_frames(s.target, [png_of_zeros(64, 64, inflated=4 << 30)])
    assert r[0][1] == "FRAME_STATUS_INVALID_ARGUMENT", r
    assert "more than 64x64 pixels can need" in r[0][2], r
    # Under that size, but inflating to 900 MiB after the 64 rows: decoding stops at the last row.
    r = send_frames(s.target, [png_of_zeros(64, 64, inflated=900 << 20)])
    assert r[0][1] == "FRAME_STATUS_OK", r
    spent = s.cpu_seconds() - cpu0
    assert spent < 1.0, f"the server spent {spent:.2f} s of CPU on two 64x64 PNGs"
    ok, why = honest_stream(s.target)
    assert ok, why
    assert s.stop() == 0


# Item 9: many large PNGs at once (small files, big pixels) are charged by their header.
def test_large_pngs_are_charged_from_the_header_before_decoding(make_server):
    from attack import png_of_zeros
    budget_mb = 320
    s = make_server("--max-memory-mb", str(budget_mb))
    png = png_of_zeros(4096, 4096, color=True)  # 64 MiB of BGR + luma once decoded
    assert len(png) < 256 << 10
    s.reset_peak()
    base = s.rss_mib()
    results = [None] * 32
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, send_frames(s.target, [png], stream_id=f"big{i}"))) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == [(1, "FRAME_STATUS_OK", "")] for r in results), results
    grew = s.peak_rss_mib() - base
    assert grew < budget_mb, f"RSS grew {grew:.0f} MiB past the {budget_mb} MiB budget"
    from framepipe.v1 import framepipe_pb2 as pb
    from framepipe.v1 import framepipe_pb2_grpc as pbg
    import grpc
    st = pbg.FramePipelineStub(grpc.insecure_channel(s.target)).GetStats(pb.GetStatsRequest())
    assert st.peak_bytes_in_flight <= (budget_mb * 5 // 8) << 20, st.peak_bytes_in_flight
    assert s.stop() == 0


# Item 9, defaults: a server started with no flags has a finite memory budget.
def test_default_memory_budget_is_finite(make_server):
    import re
    s = make_server()
    mb = int(re.search(r"max_memory_mb=(\d+)", s.text()).group(1))
    assert 256 <= mb <= 16384, mb
    assert s.stop() == 0
