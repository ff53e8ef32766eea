#!/usr/bin/python3
"""Stream a video file or a camera through framepipe and print (or plot) what it saw.

    /usr/bin/python3 clients/python/examples/stream_video.py --target 127.0.0.1:50051 clip.mp4
    /usr/bin/python3 clients/python/examples/stream_video.py 0 --plot luma.png   # camera 0

cv2.VideoCapture reads the frames; framepipe_client sends them (raw BGR by default, or
--encode jpeg to save bandwidth) with at most --in-flight frames outstanding, and the results
come back in order: one line per frame, and with --plot a figure of luma, sharpness, motion,
scene cuts and end-to-end latency over the video.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Iterator

import cv2
import numpy as np

from framepipe_client import FramePipeClient, FramePipeError, StreamConfig, TlsConfig


def frames(source: str, limit: int) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source!r} with OpenCV")
    n = 0
    try:
        while limit <= 0 or n < limit:
            ok, img = cap.read()
            if not ok:
                return
            n += 1
            yield img
    finally:
        cap.release()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="video file, stream URL, or camera index")
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--frames", type=int, default=0, help="stop after N frames (0 = all)")
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--encode", choices=["raw", "jpeg", "png"], default="raw")
    ap.add_argument("--tls-ca", help="PEM roots: connect with TLS")
    ap.add_argument("--token", help="bearer token (servers with --auth-token-file)")
    ap.add_argument("--plot", help="write a PNG figure of the results")
    args = ap.parse_args()

    tls = TlsConfig(ca=args.tls_ca) if args.tls_ca else None
    rows = []
    start = time.perf_counter()
    print(f"{'seq':>5} {'status':<18} {'luma':>7} {'sharpness':>10} {'keypoints':>9} "
          f"{'motion':>7} {'cut':>4} {'latency_ms':>10}")
    try:
        with FramePipeClient(args.target, tls=tls, token=args.token) as client:
            config = StreamConfig(stream_id="stream_video.py", max_in_flight=args.in_flight)
            for r in client.process(frames(args.source, args.frames), config=config,
                                    max_in_flight=args.in_flight, encode=args.encode):
                if r.ok:
                    a, e = r.analysis, r.enrichment
                    print(f"{r.seq:>5} {r.status.name:<18} {a.mean_luma:>7.2f} "
                          f"{a.sharpness:>10.1f} {e.keypoints:>9} {e.motion:>7.4f} "
                          f"{'yes' if e.scene_cut else '-':>4} {r.latency_ms:>10.2f}")
                    rows.append((r.seq, a.mean_luma, a.sharpness, e.motion, e.scene_cut,
                                 r.latency_ms))
                else:
                    print(f"{r.seq:>5} {r.status.name:<18} {r.error}")
    except FramePipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    secs = time.perf_counter() - start
    print(f"{len(rows)} frames in {secs:.2f} s ({len(rows) / secs if secs else 0:.1f} frames/s)",
          file=sys.stderr)
    if args.plot and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        seq, lum, sharp, motion, cut, lat = (np.array(c) for c in zip(*rows))
        fig, ax = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
        ax[0].plot(seq, lum)
        ax[0].set_ylabel("mean luma")
        ax[1].plot(seq, sharp)
        ax[1].set_ylabel("sharpness")
        ax[2].plot(seq, motion)
        ax[2].set_ylabel("motion")
        ax[3].plot(seq, lat)
        ax[3].set_ylabel("latency (ms)")
        ax[3].set_xlabel("frame")
        for a in ax:
            for s in seq[cut.astype(bool)]:
                a.axvline(s, color="red", alpha=0.4)
        fig.suptitle(f"framepipe: {args.source} (red: scene cuts)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
