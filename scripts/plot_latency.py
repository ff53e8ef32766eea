#!/usr/bin/python3
"""Draws a client latency report (`framepipe stream --report r.json`): latency over time and its
CDF, side by side, into one PNG.

usage: /usr/bin/python3 scripts/plot_latency.py report.json latency.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    r = json.load(open(sys.argv[1]))
    lat = r["samples"]["latency_ms"]
    t = r["samples"]["time_s"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.plot(t, lat, ".", ms=2, alpha=0.6)
    a.set_xlabel("time since start (s)")
    a.set_ylabel("end-to-end latency (ms)")
    a.set_title(f"{r['frames_sent']} frames, {len(r['streams'])} stream(s), "
                f"{r['frames_per_second']:.1f} frames/s")
    a.grid(alpha=0.3)
    xs = sorted(lat)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    b.plot(xs, ys)
    for p, key in ((50, "p50_ms"), (99, "p99_ms"), (99.9, "p999_ms")):
        b.axvline(r["latency"][key], ls="--", lw=0.8, color="gray")
        b.text(r["latency"][key], 0.02 + p / 400, f" p{p}", fontsize=8)
    b.set_xlabel("end-to-end latency (ms)")
    b.set_ylabel("fraction of frames")
    b.set_title("CDF")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(sys.argv[2])


if __name__ == "__main__":
    main()
