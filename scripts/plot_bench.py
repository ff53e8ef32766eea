#!/usr/bin/python3
"""Plots `framepipe bench --json` results: throughput bars per section and latency CDFs.

usage: /usr/bin/python3 scripts/plot_bench.py bench.json out_dir
"""
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def slug(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    sections = {}
    for f in data["figures"]:
        if f["unit"] == "frames/s":
            sections.setdefault(f["section"], []).append(f)
    written = []
    for section, figs in sections.items():
        fig, ax = plt.subplots(figsize=(10, 0.6 * len(figs) + 1.5))
        names = [f["name"] for f in figs][::-1]
        values = [f["value"] for f in figs][::-1]
        bars = ax.barh(names, values, color="#3b7dd8")
        ax.bar_label(bars, fmt="%.0f", padding=3)
        ax.set_xlabel("frames/s")
        ax.set_title(section, fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, f"throughput_{slug(section)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    lat = data.get("latencies_ms", {})
    if lat:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, values in lat.items():
            if not values:
                continue
            xs = sorted(values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms, log scale)")
        ax.set_ylabel("fraction of frames")
        ax.set_title("Latency CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, "latency_cdf.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    targets = data.get("targets", [])
    if targets:
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(targets) + 1.5))
        names = [t["name"] for t in targets][::-1]
        ratio = []
        for t in targets[::-1]:
            m, tg = t["measured"] or 0, t["target"] or 1
            ratio.append(tg / m if t["at_most"] and m else m / tg)
        colors = ["#2e9e4f" if r >= 1 else "#d8453b" for r in ratio]
        ax.barh(names, ratio, color=colors)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xlabel("measured / target (>= 1 passes)")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path = os.path.join(out, "targets.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
