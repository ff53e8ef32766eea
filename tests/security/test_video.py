"""Hostile clients on the compressed-video path (StreamConfig.video): garbage packets that pass
the keyframe test and reach the decoder, a stream declaring pictures over the size limits, many
decoders at once against a small memory budget. What must hold: every packet answered once, in
order, with a per-packet error; no crash; no FFmpeg line in the log per bad packet; memory and
threads back where they were; honest streams served throughout."""
from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import grpc

from attack import honest_stream
from framepipe.v1 import framepipe_pb2 as pb
from framepipe.v1 import framepipe_pb2_grpc as pbg


def call(target, config, packets, timeout=120):
    """One video stream: results as (seq, status, error), and the call's status code."""
    ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        stub = pbg.FramePipelineStub(ch)

        def gen():
            yield pb.ProcessRequest(config=config)
            for seq, (data, pts) in enumerate(packets, 1):
                yield pb.ProcessRequest(frame=pb.Frame(seq=seq, pts=pts, video_packet=data))

        out = [(r.seq, r.status, r.error) for r in stub.Process(gen(), timeout=timeout)]
        return out, grpc.StatusCode.OK
    except grpc.RpcError as e:
        return [], e.code()
    finally:
        ch.close()


def h264_config(extradata=b""):
    return pb.StreamConfig(stream_id="video-attack", max_in_flight=4,
                           video=pb.VideoFormat(codec=pb.VIDEO_CODEC_H264, extradata=extradata))


def garbage_packets(rng, n):
    """Annex-B packets that look like IDR slices and SPS/PPS to the keyframe test, with random
    bodies: they all reach the decoder."""
    out = []
    for i in range(n):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
        nal = rng.choice([b"\x67", b"\x68", b"\x65", b"\x41", b"\x06"])
        out.append((b"\x00\x00\x00\x01" + nal + body, i))
    return out


def encode(tmp: Path, size: str, frames: int) -> list:
    """An Annex-B H.264 stream made by libx264 at `size`, split into access units by PyAV."""
    import av

    path = tmp / f"clip-{size}.h264"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2",
                    "-x264-params", "bframes=2:b-adapt=0", "-g", "25", str(path)], check=True)
    with av.open(str(path)) as c:
        return [(bytes(p), i) for i, p in enumerate(c.demux(video=0)) if p.size]


def test_garbage_packets_reaching_the_decoder_are_answered_in_order(make_server):
    s = make_server()
    results = {}

    def attacker(k):
        results[k] = call(s.target, h264_config(), garbage_packets(random.Random(k), 300))

    threads = [threading.Thread(target=attacker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert decode_threads(s) > 0
    ok, why = honest_stream(s.target)
    for t in threads:
        t.join()
    assert ok, f"an honest stream failed during the attack: {why}"
    for k, (res, code) in results.items():
        assert code == grpc.StatusCode.OK, (k, code)
        assert [r[0] for r in res] == list(range(1, 301)), "every packet, in order"
        bad = [r for r in res if r[1] != pb.FRAME_STATUS_OK]
        assert all(r[1] == pb.FRAME_STATUS_INVALID_ARGUMENT for r in bad)
        assert all(f"frame seq={r[0]}: video packet pts=" in r[2] for r in bad), bad[:3]
        assert len(bad) > 250
    assert s.alive()
    log = s.text()
    assert "h264 @" not in log and "error while decoding" not in log, log[-2000:]
    # One decode thread per video stream, gone with the stream.
    deadline = time.time() + 10
    while decode_threads(s) and time.time() < deadline:
        time.sleep(0.1)
    assert decode_threads(s) == 0
    assert s.stop() == 0


def decode_threads(server) -> int:
    """framepipe_video_decode_threads from /metrics."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return int(float(re.search(r"^framepipe_video_decode_threads (\S+)$", text, re.M).group(1)))


def test_pictures_over_the_size_limits_are_refused_from_the_parameter_sets(make_server, tmp_path):
    s = make_server("--max-width", "640", "--max-height", "480")
    packets = encode(tmp_path, "1920x1080", 10)
    rss = s.rss_mib()
    t0 = time.time()
    res, code = call(s.target, h264_config(), packets)
    assert code == grpc.StatusCode.OK
    assert len(res) == len(packets)
    assert all(r[1] == pb.FRAME_STATUS_INVALID_ARGUMENT for r in res), res[:2]
    assert "1920x1080" in res[0][2] and "640x480" in res[0][2], res[0][2]
    assert time.time() - t0 < 10
    assert s.rss_mib() - rss < 50, "no picture of the refused size was allocated"
    assert s.stop() == 0


def test_decoders_beyond_the_memory_budget_are_refused_and_the_rest_are_served(make_server,
                                                                             tmp_path):
    # --max-memory-mb 48: frames 30 MiB, of which decoders may hold at most half; a 720p
    # decoder charges about 11 MiB, so one or two fit and the others are refused until room.
    s = make_server("--max-memory-mb", "48")
    packets = encode(tmp_path, "1280x720", 60)
    results = {}

    def stream(k):
        results[k] = call(s.target, h264_config(), packets)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = 0
    for k, (res, code) in results.items():
        assert code == grpc.StatusCode.OK, (k, code)
        assert [r[0] for r in res] == list(range(1, len(packets) + 1))
        for seq, status, err in res:
            if status != pb.FRAME_STATUS_OK:
                assert status == pb.FRAME_STATUS_INVALID_ARGUMENT, err
                refused += "memory budget" in err
    assert refused > 0, "four 720p decoders fit in a 15 MiB share: the budget was not applied"
    assert any(all(r[1] == pb.FRAME_STATUS_OK for r in res) for res, _ in results.values()), \
        "no stream was served at all"
    # Every charge was given back: a new stream decodes from its first packet.
    res, _ = call(s.target, h264_config(), packets)
    assert all(r[1] == pb.FRAME_STATUS_OK for r in res), [r for r in res if r[1] != 1][:2]
    assert s.stop() == 0
