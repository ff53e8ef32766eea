"""Compressed video on real footage: clips from Debian packages (downloaded at test time with
`apt-get download`, cached, never committed), made into fixtures by ffmpeg's real encoders -
H.264 with B-frames and a GOP of 30 in MP4 (avcC), the same as raw Annex-B and as MPEG-TS, HEVC
in MP4 (hvcC), and a camera's own MP4 as recorded - then sent as packets by the real client to
the real server on 127.0.0.1:0. Every packet is answered once, in order, with its pts, and
each picture's mean luma matches an independent decode (PyAV + OpenCV) within 1%. Damaged
streams (truncated packets, flipped bytes, a lost keyframe, a mid-GOP start) are answered per
packet and recover at the next keyframe."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(REPO / "bench" / "scene_cuts"))
sys.path.insert(0, str(REPO / "clients" / "python"))

from framepipe_testing import (FramepipeServer, avcc_has_idr,  # noqa: E402
                               framepipe_binary, reference_luma as reference)

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from framepipe_client import (FramePipeClient, FrameStatus, StreamConfig,  # noqa: E402
                              VideoPacket, open_video_packets)

SECONDS = "6"  # of each clip: enough for several GOPs, short enough for CI


@pytest.fixture(scope="module")
def footage() -> Path:
    import scene_cuts

    recipe = json.loads((REPO / "bench/scene_cuts/recipe.json").read_text())
    cache = Path(os.environ.get("FRAMEPIPE_FOOTAGE", Path.home() / ".cache/framepipe/footage"))
    try:
        return scene_cuts.fetch_footage(recipe, cache)
    except SystemExit as e:
        if e.code == 77:
            pytest.skip("the Debian packages with the clips could not be downloaded")
        raise


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def fixtures(footage, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("video")
    megamind = footage / "usr/share/doc/opencv-doc/examples/data/Megamind.avi"
    tree = footage / "usr/share/doc/opencv-doc/examples/data/tree.avi"
    hello = footage / "usr/share/forensics-samples/original-files/movie2/movie-hello.mp4"
    out = {"camera_mp4": hello}  # a phone's own H.264 MP4, as recorded
    out["h264_mp4"] = d / "h264.mp4"
    ffmpeg("-i", str(megamind), "-t", SECONDS, "-an", "-c:v", "libx264", "-bf", "3", "-g", "30",
           "-pix_fmt", "yuv420p", str(out["h264_mp4"]))
    out["h264_annexb"] = d / "h264.h264"
    ffmpeg("-i", str(out["h264_mp4"]), "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264",
           str(out["h264_annexb"]))
    out["h264_ts"] = d / "h264.ts"
    ffmpeg("-i", str(out["h264_mp4"]), "-c", "copy", str(out["h264_ts"]))
    out["h264_mkv"] = d / "h264.mkv"
    ffmpeg("-i", str(out["h264_mp4"]), "-c", "copy", str(out["h264_mkv"]))
    out["hevc_mp4"] = d / "hevc.mp4"
    ffmpeg("-i", str(tree), "-t", SECONDS, "-an", "-c:v", "libx265", "-x265-params",
           "log-level=error:bframes=3:keyint=30", "-pix_fmt", "yuv420p", str(out["hevc_mp4"]))
    return out


@pytest.fixture(scope="module")
def server():
    s = FramepipeServer(["--max-in-flight", "4"])
    yield s
    assert s.stop() == 0


def demuxed(path: Path) -> list:
    return list(open_video_packets(str(path))[1])


def discarded(path: Path) -> set:
    """pts of the packets the container marks as not presented (an MP4 edit list): a player
    decodes them and drops their pictures, so an independent decode has none to compare with."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts,flags", "-of", "csv=p=0", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return {int(pts) for pts, flags in (ln.split(",")[:2] for ln in out.splitlines() if ln)
            if "D" in flags and pts.lstrip("-").isdigit()}


def check_exact(results: list, packets: list, luma: list, first_intact: int = 0,
                not_presented: set = frozenset()) -> None:
    """`luma`: the reference luma of each packet's picture, by packet position (None: none)."""
    assert len(results) == len(packets), "every packet answered exactly once"
    for i, (r, p) in enumerate(zip(results, packets)):
        assert r["seq"] == results[0]["seq"] + i, "send order"
        assert r["pts"] == p.pts
        if i >= first_intact:
            assert r["status"] == "FRAME_STATUS_OK", (i, r["error"])
            if luma[i] is None:
                assert p.pts in not_presented, i
            else:
                assert r["mean_luma"] == pytest.approx(luma[i], rel=0.01, abs=0.05), i


def luma_by_position(path: Path, packets: list) -> list:
    ref = reference(path)
    return [ref.get(p.pts) for p in packets]


@pytest.mark.parametrize("name", ["h264_mp4", "h264_annexb", "h264_ts", "h264_mkv",
                                  "hevc_mp4", "camera_mp4"])
def test_cpp_client_sends_packets_and_every_picture_matches(server, fixtures, name, tmp_path):
    path = fixtures[name]
    packets = demuxed(path)
    assert len(packets) > 60
    if name == "h264_annexb":
        # A raw elementary stream has no timestamps (pts numbers the packets): its pictures are
        # those of the MP4 it was cut from, packet for packet.
        mp4 = fixtures["h264_mp4"]
        luma = luma_by_position(mp4, demuxed(mp4))
    else:
        luma = luma_by_position(path, packets)
    if name != "camera_mp4" and name != "h264_annexb":
        assert any(b.pts < a.pts for a, b in zip(packets, packets[1:])), "B-frames"
    out = tmp_path / "results.jsonl"
    p = subprocess.run([framepipe_binary(), "stream", "--target", server.target, "--input",
                        str(path), "--send", "packets", "--no-pace", "--frames", "0", "--out",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"sent: \d+ bytes/frame\s+client CPU: [\d.]+ ms/frame", p.stdout), p.stdout
    results = []
    for line in out.read_text().splitlines():
        r = json.loads(line)
        results.append({"seq": int(r["seq"]), "pts": int(r["pts"]), "status": r["status"],
                        "error": r["error"], "mean_luma": r["analysis"]["mean_luma"]})
    check_exact(results, packets, luma, not_presented=discarded(path))


def damaged_stream(packets: list, kind: str) -> tuple:
    """The packets with one kind of damage, and the index from which all must decode."""
    keys = [i for i, p in enumerate(packets) if avcc_has_idr(p.data)]
    assert len(keys) >= 3, keys
    v = [VideoPacket(p.data, pts=p.pts) for p in packets]
    k1, k2 = keys[1], keys[2]
    if kind == "truncated":
        for i in range(k1 + 1, k1 + 6):
            v[i] = VideoPacket(v[i].data[: len(v[i].data) // 3], pts=v[i].pts)
        return v, k2
    if kind == "flipped":
        import random

        rng = random.Random(7)
        for i in range(k1, k2):
            b = bytearray(v[i].data)
            for _ in range(30):
                j = rng.randrange(8, len(b))
                b[j] ^= rng.randrange(1, 256)
            v[i] = VideoPacket(bytes(b), pts=v[i].pts)
        return v, k2
    if kind == "lost_keyframe":
        del v[k1]
        return v, k2 - 1
    if kind == "mid_gop_start":
        return v[5:], k1 - 5
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "flipped", "lost_keyframe", "mid_gop_start"])
def test_damage_is_answered_per_packet_and_the_stream_recovers(server, fixtures, kind):
    path = fixtures["h264_mp4"]
    fmt, it = open_video_packets(str(path))
    sent, intact = damaged_stream(list(it), kind)
    with FramePipeClient(server.target) as client:
        got = list(client.process(sent, config=StreamConfig(video=fmt)))
    results = [{"seq": r.seq, "pts": r.pts, "status": "FRAME_STATUS_" + r.status.name,
                "error": r.error, "mean_luma": r.analysis.mean_luma if r.ok else None}
               for r in got]
    ref = reference(path)
    check_exact(results, sent, [ref.get(p.pts) for p in sent], first_intact=intact)
    bad = [r for r in got if not r.ok]
    assert all(r.status is FrameStatus.INVALID_ARGUMENT for r in bad)
    assert all(f"frame seq={r.seq}: video packet pts={r.pts}" in r.error for r in bad), bad[:2]
    if kind != "lost_keyframe":  # a lost mid-stream IDR is concealed by the decoder
        assert bad, "the damage is reported"


def test_metrics_count_decoded_pictures_and_errors_and_the_log_stays_quiet(server, fixtures):
    # Runs after the tests above (same module-scoped server).
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()

    def value(name: str, codec: str) -> float:
        m = re.search(rf'^{name}{{codec="{codec}"}} (\S+)$', text, re.M)
        assert m, name
        return float(m.group(1))

    assert value("framepipe_video_frames_decoded_total", "h264") > 300
    assert value("framepipe_video_frames_decoded_total", "hevc") > 60
    assert value("framepipe_video_decode_errors_total", "h264") > 0
    assert re.search(r'^framepipe_video_decode_seconds_count{codec="h264"} [1-9]', text, re.M)
    # FFmpeg's own messages about damaged packets never reach the log (one line per packet a
    # client could multiply); the stream lines are all there is.
    lines = server.text().splitlines()
    assert not [ln for ln in lines if "h264 @" in ln or "hevc @" in ln], lines[:5]
