"""framepipe_client against a real server: order, values, bad frames, cancellation,
backpressure, threads, RPC errors, TLS + tokens, the package build and the example script."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import cv2
import grpc
import numpy as np
import pytest

from framepipe_client import (Frame, FrameError, FramePipeClient, FramePipeError, FrameStatus,
                              Overload, PixelFormat, StreamConfig, TlsConfig)

from conftest import REPO, Server


def luma(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit BGR2GRAY, exactly: the service's luma contract."""
    b, g, r = (bgr[..., i].astype(np.int64) for i in range(3))
    return (3735 * b + 19235 * g + 9798 * r + (1 << 14)) >> 15


def random_frames(n: int, seed: int, h: int = 96, w: int = 128) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def wait_until(pred, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def test_results_in_order_with_exact_values(server: Server) -> None:
    frames = random_frames(60, seed=1)
    with FramePipeClient(server.target) as client:
        results = list(client.process(frames, config=StreamConfig(stream_id="py-order",
                                                                   max_in_flight=4)))
    assert [r.seq for r in results] == list(range(1, 61))
    for img, r in zip(frames, results):
        assert r.ok, r.error
        assert r.frame is img  # the object passed in comes back with its result
        assert (r.analysis.width, r.analysis.height) == (128, 96)
        assert r.analysis.mean_luma == pytest.approx(luma(img).mean(), abs=1e-6)
        assert sum(r.analysis.luma_histogram) == 96 * 128
        assert r.timings.total_us > 0
        assert r.latency_ms > 0


def test_bytes_frames_pixel_formats_and_metadata(server: Server) -> None:
    base = random_frames(1, seed=2)[0]
    png = cv2.imencode(".png", base)[1].tobytes()  # lossless: same pixels as `base`
    rgb = np.ascontiguousarray(base[..., ::-1])
    gray = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    items = [
        Frame(png, seq=10, capture_time_us=123456, tags={"camera": "front"}),
        Frame(rgb, seq=20, pixel_format=PixelFormat.RGB),
        Frame(gray, seq=35),
        base,  # seq 36: previous + 1
    ]
    with FramePipeClient(server.target) as client:
        results = list(client.process(items))
        jpeg = list(client.process([base], encode="jpeg", jpeg_quality=95))
    assert [r.seq for r in results] == [10, 20, 35, 36]
    want = luma(base).mean()
    for r in results:
        assert r.ok, r.error
        assert r.analysis.mean_luma == pytest.approx(want, abs=1e-6)
    assert results[0].tags == {"camera": "front"}
    assert results[0].capture_time_us == 123456
    assert jpeg[0].ok and abs(jpeg[0].analysis.mean_luma - want) < 2.0


def test_bad_frames_get_their_own_status_and_the_stream_goes_on(server: Server) -> None:
    good = random_frames(4, seed=3)
    truncated = cv2.imencode(".jpg", good[0])[1].tobytes()[:200]
    items = [good[0], b"definitely not an image", good[1], b"", truncated, good[2],
             Frame(np.zeros((8, 8, 3), np.uint8)), good[3]]
    with FramePipeClient(server.target) as client:
        results = list(client.process(items))
    assert [r.seq for r in results] == list(range(1, 9))
    statuses = [r.status for r in results]
    bad = {2, 4, 5}
    for r in results:
        if r.seq in bad:
            assert r.status is FrameStatus.INVALID_ARGUMENT
            assert f"seq={r.seq}" in r.error  # the error names the frame
            assert r.analysis is None
            with pytest.raises(FrameError) as info:
                r.raise_for_status()
            assert info.value.seq == r.seq
        else:
            assert r.status is FrameStatus.OK, (r.seq, r.error, statuses)
            assert r.raise_for_status() is r


def test_client_side_validation_raises_after_earlier_results(server: Server) -> None:
    frames = random_frames(3, seed=4) + [np.zeros((4, 4, 3), np.float32)]
    got = []
    with FramePipeClient(server.target) as client:
        with pytest.raises(ValueError, match=r"frame 3: images must be uint8"):
            for r in client.process(frames):
                got.append(r.seq)
    assert got == [1, 2, 3]


def test_an_exception_in_the_frame_source_is_reraised_after_sent_results(server: Server) -> None:
    def source():
        yield from random_frames(5, seed=5)
        raise RuntimeError("camera unplugged")

    got = []
    with FramePipeClient(server.target) as client:
        with pytest.raises(RuntimeError, match="camera unplugged"):
            for r in client.process(source()):
                got.append(r.seq)
    assert got == [1, 2, 3, 4, 5]


def test_breaking_out_of_the_loop_cancels_the_call(server: Server) -> None:
    produced = 0

    def endless():
        nonlocal produced
        img = random_frames(1, seed=6)[0]
        while True:
            produced += 1
            yield img

    with FramePipeClient(server.target) as client:
        seqs = []
        for r in client.process(endless(), max_in_flight=6):
            seqs.append(r.seq)
            if len(seqs) == 10:
                break
        assert seqs == list(range(1, 11))
        # The server sees the cancellation: nothing of this stream stays in flight.
        wait_until(lambda: client.stats().active_streams == 0 and client.stats().in_flight == 0)
        taken = produced
        time.sleep(0.3)
        assert produced == taken  # the source is no longer read
        # At most the window past what was consumed (+1 being converted when it stopped).
        assert taken <= 10 + 6 + 1
        # The client and server carry on.
        assert [r.seq for r in client.process(random_frames(3, seed=7))] == [1, 2, 3]


def test_a_slow_consumer_bounds_what_is_read_from_the_source(server: Server) -> None:
    window = 3
    produced = 0
    consumed = 0
    most_ahead = 0
    lock = threading.Lock()

    def source():
        nonlocal produced, most_ahead
        for img in random_frames(30, seed=8):
            with lock:
                produced += 1
                most_ahead = max(most_ahead, produced - consumed)
            yield img

    with FramePipeClient(server.target) as client:
        for r in client.process(source(), max_in_flight=window):
            assert r.ok
            with lock:
                consumed += 1
            time.sleep(0.01)  # a slow consumer (the bound must hold whatever the timing)
    assert consumed == 30
    # Taken from the source and not yet handed back: never more than the window.
    assert most_ahead <= window


def test_several_threads_share_one_client(server: Server) -> None:
    errors: List[BaseException] = []
    client = FramePipeClient(server.target)

    def run(k: int) -> None:
        try:
            frames = random_frames(40, seed=100 + k, h=64, w=80)
            rng = random.Random(k)
            seqs = sorted(rng.sample(range(1, 1000), 40))  # gaps allowed
            items = [Frame(f, seq=s, tags={"thread": str(k)}) for f, s in zip(frames, seqs)]
            results = list(client.process(items, config=StreamConfig(stream_id=f"t{k}")))
            assert [r.seq for r in results] == seqs
            for img, r in zip(frames, results):
                assert r.ok and r.tags == {"thread": str(k)}
                assert r.analysis.mean_luma == pytest.approx(luma(img).mean(), abs=1e-6)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    client.close()
    assert not errors, errors


def test_health_and_stats(server: Server) -> None:
    with FramePipeClient(server.target) as client:
        client.wait_ready(10)
        assert client.health() == "SERVING"
        assert client.health("framepipe.v1.FramePipeline") == "SERVING"
        before = client.stats()
        r = client.analyse(random_frames(1, seed=9)[0])
        assert r.ok and r.seq == 1
        after = client.stats()
        assert after.frames_ok == before.frames_ok + 1
        assert after.backend == "cpu" and after.version


def test_rpc_errors_raise_framepipe_error(make_server) -> None:
    # Nothing listens: UNAVAILABLE.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with FramePipeClient(dead) as client:
        with pytest.raises(FramePipeError) as info:
            list(client.process(random_frames(2, seed=10)))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE

    # Over --max-streams: RESOURCE_EXHAUSTED, while the first stream still works.
    srv = make_server("--max-streams", "1")
    gate = threading.Event()

    def held():
        yield random_frames(1, seed=11)[0]
        gate.wait(30)

    with FramePipeClient(srv.target) as client:
        first = client.process(held())
        assert next(first).seq == 1
        with pytest.raises(FramePipeError) as info:
            list(client.process(random_frames(2, seed=12)))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "streams" in info.value.details
        gate.set()
        assert list(first) == []  # the first stream ends cleanly

    # A deadline on the call: DEADLINE_EXCEEDED, with the frames in flight reported lost.
    srv2 = make_server()

    def stalls():
        yield random_frames(1, seed=13)[0]
        time.sleep(3)
        yield random_frames(1, seed=14)[0]

    with FramePipeClient(srv2.target) as client:
        with pytest.raises(FramePipeError) as info:
            list(client.process(stalls(), timeout=1.0))
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_tls_and_bearer_tokens(make_server, tmp_path: Path) -> None:
    sh = f"""set -e; cd {tmp_path}
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=ca
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out server.key
openssl req -new -key server.key -out server.csr -subj /CN=server
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile ext
echo 'python-test-token-0123456789abcdef' > tokens.txt
"""
    subprocess.run(["bash", "-c", sh], check=True, capture_output=True)
    srv = make_server("--tls-cert", str(tmp_path / "server.pem"), "--tls-key",
                      str(tmp_path / "server.key"), "--auth-token-file",
                      str(tmp_path / "tokens.txt"))
    tls = TlsConfig(ca=str(tmp_path / "ca.pem"))
    frames = random_frames(5, seed=15)
    with FramePipeClient(srv.target, tls=tls, token="python-test-token-0123456789abcdef") as c:
        assert [r.seq for r in c.process(frames)] == [1, 2, 3, 4, 5]
    with FramePipeClient(srv.target, tls=tls, token="wrong-token-0123456789abcdefghij") as c:
        with pytest.raises(FramePipeError) as info:
            list(c.process(frames))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with FramePipeClient(srv.target, tls=tls) as c:  # health needs no token
        assert c.health() == "SERVING"
    with pytest.raises(ValueError, match="needs TLS"):
        FramePipeClient(srv.target, token="x")


def test_drop_oldest_and_deadlines_come_back_per_frame(server: Server) -> None:
    big = random_frames(1, seed=16, h=720, w=1280)[0]
    cfg = StreamConfig(max_in_flight=1, overload=Overload.DROP_OLDEST)
    with FramePipeClient(server.target) as client:
        results = list(client.process([big] * 40, config=cfg, max_in_flight=40))
    assert [r.seq for r in results] == list(range(1, 41))
    statuses = {r.status for r in results}
    assert statuses <= {FrameStatus.OK, FrameStatus.DROPPED}
    assert FrameStatus.OK in statuses
    for r in results:
        if r.status is FrameStatus.DROPPED:
            assert f"seq={r.seq}" in r.error


def _write_video(path: Path, n: int) -> List[np.ndarray]:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    assert w.isOpened()
    for i in range(n):
        img = np.full((120, 160, 3), 20 + 8 * i, np.uint8)
        cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        w.write(img)
    w.release()
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    return out


def test_example_stream_video_script(server: Server, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    decoded = _write_video(video, 20)
    assert len(decoded) == 20
    plot = tmp_path / "plot.png"
    env = dict(os.environ, MPLBACKEND="Agg")
    out = subprocess.run(
        [sys.executable, str(REPO / "clients/python/examples/stream_video.py"), "--target",
         server.target, str(video), "--plot", str(plot)],
        env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.lstrip()[:1].isdigit()]
    assert len(lines) == 20
    assert [int(ln.split()[0]) for ln in lines] == list(range(1, 21))
    for ln, img in zip(lines, decoded):
        assert float(ln.split()[2]) == pytest.approx(luma(img).mean(), abs=0.05)
    assert plot.stat().st_size > 1000


def test_package_build_generates_the_stubs(tmp_path: Path) -> None:
    pkg = REPO / "clients/python"
    build = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                    str(tmp_path / "b"), "--build-lib", str(build)], cwd=pkg, check=True,
                   capture_output=True)
    assert (build / "framepipe/v1/framepipe_pb2_grpc.py").is_file()
    # Imported from the built tree alone (no checkout fallback, no build/<preset>/python).
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(build), "HOME": str(tmp_path),
           "FRAMEPIPE_PROTO_DIR": str(tmp_path / "none")}
    code = ("import framepipe_client, framepipe.v1.framepipe_pb2 as p; "
            "print(p.__file__); print(framepipe_client.FramePipeClient.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0].startswith(str(build))
