#!/usr/bin/python3
"""`framepipe bench` runs end to end and reports what bench/README.md says it reports.

Runs the quickest section (`--quick --only overhead`) with `--json` and `--plot`, stdout to a file
as a user redirecting the report would, and checks the plumbing, never the speed (no timed
asserts): the compressed-video section's figures come back from its client processes; the table has the section's four figures, positive and finite; the targets block has
the graph-overhead target with a PASS or FALL SHORT verdict that agrees with its numbers; the
JSON carries the same figures and target; the report is complete before the plot script's
output (stdout flushed before the child runs); the plots are PNG files.

usage: bench_smoke.py --framepipe PATH
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

SECTION = "Graph overhead, trivial stage bodies"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framepipe", required=True)
    args = ap.parse_args()
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "bench.txt")
        json_path = os.path.join(tmp, "bench.json")
        plots = os.path.join(tmp, "plots")
        os.mkdir(plots)
        env = dict(os.environ, MPLBACKEND="Agg")
        with open(out_path, "w") as out:
            rc = subprocess.run([args.framepipe, "bench", "--quick", "--only", "overhead",
                                 "--json", json_path, "--plot", plots],
                                stdout=out, stderr=subprocess.PIPE, text=True, env=env,
                                timeout=240).returncode
        text = open(out_path).read()
        print(text)
        check(rc == 0, f"bench exited {rc}")
        lines = text.splitlines()

        # The table: the section and its four per-frame costs.
        check(SECTION in lines, "no section header " + SECTION)
        rows = [l for l in lines if l.rstrip().endswith("us/frame")]
        check(len(rows) == 4, f"expected 4 us/frame rows, got {len(rows)}")
        for r in rows:
            v = float(r.split()[-2])
            check(math.isfinite(v) and v > 0, "not a positive figure: " + r)

        # The targets block: one verdict line, consistent with measured/target.
        verdicts = [l for l in lines if re.match(r"\s+(PASS|FALL SHORT)\s+graph overhead", l)]
        check(len(verdicts) == 1, "no graph-overhead verdict line")
        if verdicts:
            m = re.search(r"([0-9.]+) / <= ([0-9.]+)", verdicts[0])
            check(m is not None, "verdict line without measured / target: " + verdicts[0])
            if m:
                passed = float(m.group(1)) <= float(m.group(2))
                check(verdicts[0].strip().startswith("PASS") == passed,
                      "verdict disagrees with its numbers: " + verdicts[0])

        # Report complete before the plot script's lines.
        end = [i for i, l in enumerate(lines) if re.fullmatch(r"\(\d+ s\)", l.strip())]
        pngs = [i for i, l in enumerate(lines) if l.strip().endswith(".png")]
        check(len(end) == 1, "no '(N s)' line closing the report")
        check(bool(pngs), "the plot script printed no file")
        if end and pngs:
            check(min(pngs) > end[0], "plot output interleaved with the report")

        # JSON: same figures and target.
        data = json.load(open(json_path))
        figs = [f for f in data["figures"] if f["section"] == SECTION]
        check(len(figs) == 4 and all(f["unit"] == "us/frame" and f["value"] > 0 for f in figs),
              "JSON figures of the section: %r" % figs)
        tg = [t for t in data["targets"] if t["name"].startswith("graph overhead")]
        check(len(tg) == 1, "JSON has no graph-overhead target")
        if tg:
            t = tg[0]
            check(t["at_most"] is True and t["target"] == 2.0, "target definition: %r" % t)
            check(t["pass"] == (t["measured"] <= t["target"]), "JSON verdict: %r" % t)

        # The compressed-video section: its clients run as child processes and report through
        # --report JSON; every figure must come back positive, and its four targets judged.
        vjson = os.path.join(tmp, "video.json")
        p = subprocess.run([args.framepipe, "bench", "--quick", "--only", "video", "--json", vjson],
                           capture_output=True, text=True, timeout=240)
        check(p.returncode == 0, f"bench --only video exited {p.returncode}: {p.stderr[-500:]}")
        if p.returncode == 0:
            vdata = json.load(open(vjson))
            vfigs = [f for f in vdata["figures"] if f["section"].startswith("Compressed video in")]
            check(len(vfigs) == 8 and all(f["value"] > 0 for f in vfigs),
                  "video figures: %r" % vfigs)
            vt = [t for t in vdata["targets"] if "H.264" in t["name"]]
            check(len(vt) == 4 and all(t["pass"] == (t["measured"] >= t["target"]) for t in vt),
                  "video targets: %r" % vt)

        # Plots: PNG files.
        files = [f for f in os.listdir(plots) if f.endswith(".png")]
        check("targets.png" in files, "no targets.png in %r" % files)
        for f in files:
            with open(os.path.join(plots, f), "rb") as fh:
                check(fh.read(8) == b"\x89PNG\r\n\x1a\n", f + " is not a PNG")

    for f in failures:
        print("FAIL:", f)
    print("bench smoke: %s" % ("FAIL" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
