"""Compressed video through the Python client: PyAV demux, the server decodes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from framepipe_client import (FramePipeClient, FrameStatus, StreamConfig, VideoCodec,
                              VideoFormat, VideoPacket, open_video_packets)

pytest.importorskip("av")
pytest.importorskip("cv2")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))
from framepipe_testing import avcc_has_idr, reference_luma  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A short H.264 MP4 with B-frames (GOP 12), made by ffmpeg's libx264."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=192x108:rate=25", "-frames:v", "40", "-c:v", "libx264",
                    "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path




def test_process_video_answers_every_packet_in_order_with_its_picture(server, clip):
    fmt, packets = open_video_packets(str(clip))
    assert fmt.codec is VideoCodec.H264 and fmt.extradata[:1] == b"\x01"  # avcC
    sent = list(packets)
    assert any(b.pts < a.pts for a, b in zip(sent, sent[1:])), "B-frames reorder pictures"
    luma = reference_luma(clip)
    with FramePipeClient(server.target) as client:
        results = list(client.process_video(str(clip)))
    assert [r.seq for r in results] == list(range(1, len(sent) + 1))
    assert [r.pts for r in results] == [p.pts for p in sent]
    for r in results:
        assert r.ok, r.error
        assert r.analysis.mean_luma == pytest.approx(luma[r.pts], rel=0.01)


def test_damaged_packets_are_answered_and_the_stream_recovers(server, clip):
    fmt, packets = open_video_packets(str(clip))
    sent = list(packets)
    keys = [i for i, p in enumerate(sent) if avcc_has_idr(p.data)]
    assert keys[0] == 0
    assert len(keys) >= 2
    damaged = [VideoPacket(p.data, pts=p.pts) for p in sent]
    for i in range(1, 4):  # truncate the packets after the first keyframe
        damaged[i] = VideoPacket(damaged[i].data[: len(damaged[i].data) // 4], pts=damaged[i].pts)
    with FramePipeClient(server.target) as client:
        results = list(client.process(damaged, config=StreamConfig(video=fmt)))
    assert [r.pts for r in results] == [p.pts for p in sent]
    bad = [r for r in results if not r.ok]
    assert bad and all(r.status is FrameStatus.INVALID_ARGUMENT for r in bad)
    assert all(f"frame seq={r.seq}" in r.error for r in bad)
    assert all(r.ok for r in results[keys[1]:]), "everything from the next keyframe decodes"


def test_video_packets_need_a_video_stream_and_vice_versa(server, clip):
    with FramePipeClient(server.target) as client:
        with pytest.raises(TypeError, match="needs StreamConfig"):
            list(client.process([VideoPacket(b"\x00\x00\x01\x65")]))
        fmt = VideoFormat(VideoCodec.H264)
        with pytest.raises(TypeError, match="sends VideoPacket"):
            list(client.process([np.zeros((8, 8, 3), np.uint8)], config=StreamConfig(video=fmt)))


def test_nvdec_unavailable_falls_back_to_the_cpu_with_one_log_line(make_server, clip):
    s = make_server("--video-decoder", "nvdec")
    log = s.log_text()
    # This machine may have no CUDA device; where it has one, the line is absent and NVDEC runs.
    fallback = "event=video_decoder_fallback" in log
    assert log.count("event=video_decoder_fallback") <= 1
    started = [ln for ln in log.splitlines() if "event=server_started" in ln][0]
    assert ("video_decoder=cpu" in started) == fallback, started
    if fallback:
        assert "reason=" in [ln for ln in log.splitlines() if "video_decoder_fallback" in ln][0]
    with FramePipeClient(s.target) as client:
        results = list(client.process_video(str(clip)))
    assert results and all(r.ok for r in results), [r.error for r in results if not r.ok][:2]
    assert s.log_text().count("event=video_decoder_fallback") <= 1, "one line, not one per stream"


def test_length_prefixed_packets_without_extradata_say_what_is_missing(server, clip):
    fmt, packets = open_video_packets(str(clip))
    no_extradata = VideoFormat(VideoCodec.H264)  # MP4 packets, but no avcC record sent
    with FramePipeClient(server.target) as client:
        results = list(client.process(list(packets)[:5], config=StreamConfig(video=no_extradata)))
    assert len(results) == 5 and not any(r.ok for r in results)
    assert "need StreamConfig.video.extradata" in results[0].error, results[0].error
