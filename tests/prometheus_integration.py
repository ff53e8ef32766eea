#!/usr/bin/python3
"""A real Prometheus scraping a real framepipe server under load from the real client.

Starts `framepipe serve` and Debian's `prometheus` on loopback (temporary config and data dir),
streams frames with `framepipe stream --report`, then queries Prometheus' HTTP API:
  * sum by (status) (framepipe_frames_total) equals the client's per-status counts;
  * histogram_quantile(0.99, sum by (le,stage)(rate(framepipe_stage_seconds_bucket[30s])))
    answers for every stage, and for stage="total" lies within one histogram bucket of the p99
    the client computed from the per-frame Timings.
Exit 77 (ctest: skipped) only when no prometheus binary exists.

usage: prometheus_integration.py --framepipe PATH
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0]
STAGES = ["queue", "decode", "analyse", "enrich", "reorder", "write", "total"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, what, timeout=60.0):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(0.25)
    sys.exit(f"FAIL: timed out waiting for {what} (last: {last})")


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body)
    return body["data"]["result"]


def bucket_index(seconds):
    for i, b in enumerate(BUCKETS):
        if seconds <= b:
            return i
    return len(BUCKETS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framepipe", required=True)
    args = ap.parse_args()
    prom_bin = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                              if os.path.exists("/usr/bin/prometheus") else None)
    if not prom_bin:
        print("SKIP: no prometheus binary (scripts/setup.sh installs Debian's prometheus)")
        return 77
    tmp = tempfile.mkdtemp(prefix="framepipe-prom-")
    procs = []
    try:
        server = subprocess.Popen([args.framepipe, "serve", "--listen", "127.0.0.1:0", "--metrics",
                                   "127.0.0.1:0", "--workers", "2", "--backend", "cpu"],
                                  stderr=subprocess.PIPE, text=True)
        procs.append(server)
        lines = []
        ports = {}
        while "metrics" not in ports:
            line = server.stderr.readline()
            if not line:
                sys.exit("FAIL: server exited: " + "".join(lines))
            lines.append(line)
            m = re.search(r"event=server_started .* port=(\d+)", line)
            if m:
                ports["grpc"] = int(m.group(1))
            m = re.search(r"event=metrics_listening .* port=(\d+)", line)
            if m:
                ports["metrics"] = int(m.group(1))
        prom_port = free_port()
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: framepipe\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{ports['metrics']}']\n")
        prom = subprocess.Popen([prom_bin, f"--config.file={cfg}",
                                 f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(prom)
        wait_for(lambda: query(prom_port, 'up{job="framepipe"}') and
                 query(prom_port, 'up{job="framepipe"}')[0]["value"][1] == "1",
                 "Prometheus to scrape framepipe")
        report = os.path.join(tmp, "report.json")
        client = subprocess.run([args.framepipe, "stream", "--target",
                                 f"127.0.0.1:{ports['grpc']}", "--frames", "120", "--streams", "2",
                                 "--size", "640x480", "--no-progress", "--report", report],
                                capture_output=True, text=True, timeout=300)
        if client.returncode != 0:
            sys.exit("FAIL: client: " + client.stdout + client.stderr)
        r = json.load(open(report))
        results = r["results"]

        def counted():
            res = query(prom_port, "sum(framepipe_frames_total)")
            return res and float(res[0]["value"][1]) == results

        wait_for(counted, f"Prometheus to count {results} frames")
        by_status = {x["metric"]["status"]: float(x["value"][1])
                     for x in query(prom_port, "sum by (status) (framepipe_frames_total)")}
        for status, n in r["by_status"].items():
            if by_status.get(status, 0.0) != n:
                sys.exit(f"FAIL: frames_total{{status={status}}} = {by_status.get(status)}, "
                         f"client counted {n}")
        expr = ("histogram_quantile(0.99, sum by (le,stage)"
                "(rate(framepipe_stage_seconds_bucket[30s])))")
        p99 = {x["metric"]["stage"]: float(x["value"][1]) for x in query(prom_port, expr)}
        missing = [s for s in STAGES if s not in p99 or p99[s] != p99[s]]
        if missing:
            sys.exit(f"FAIL: no p99 for stages {missing}: {p99}")
        client_p99 = r["server_total_p99_ms"] / 1000.0
        got, want = bucket_index(p99["total"]), bucket_index(client_p99)
        if abs(got - want) > 1:
            sys.exit(f"FAIL: Prometheus p99(total) = {p99['total']:.5f} s, client p99 from Timings "
                     f"= {client_p99:.5f} s: more than one bucket apart")
        print(f"OK: {results} frames; Prometheus p99 total {p99['total'] * 1000:.2f} ms vs "
              f"client {client_p99 * 1000:.2f} ms; stages: "
              + ", ".join(f"{s} {p99[s] * 1000:.2f} ms" for s in STAGES))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
