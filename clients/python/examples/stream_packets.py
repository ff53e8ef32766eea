#!/usr/bin/env python3
"""Send a video's H.264/HEVC packets as they are (no decode, no re-encode on this side) and
print what the server found in each picture.

    /usr/bin/python3 clients/python/examples/stream_packets.py clip.mp4 --target 127.0.0.1:50051
    /usr/bin/python3 clients/python/examples/stream_packets.py rtsp://camera/stream --frames 300
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from framepipe_client import FramePipeClient, StreamConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="video file (MP4, MKV, TS...) or camera URL")
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--frames", type=int, default=None, help="stop after this many packets")
    ap.add_argument("--realtime", action="store_true", help="pace by the packets' timestamps")
    args = ap.parse_args()
    bad = 0
    with FramePipeClient(args.target) as client:
        for r in client.process_video(args.source, config=StreamConfig(stream_id="packets"),
                                      realtime=args.realtime, frames=args.frames):
            if r.ok:
                cut = "  CUT" if r.enrichment.scene_cut else ""
                print(f"seq={r.seq:5d} pts={r.pts:8d} luma={r.analysis.mean_luma:6.1f} "
                      f"motion={r.enrichment.motion:.3f}{cut}")
            else:
                bad += 1
                print(f"seq={r.seq:5d} pts={r.pts:8d} {r.status.name}: {r.error}")
    print(f"{bad} packet(s) not decoded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
