#!/usr/bin/python3
"""Soak test: a real framepipe server under mixed misbehaving clients for N minutes.

Clients, started continuously: fast streams, slow readers, clients killed mid-stream, streams
of corrupt images, idle streams the server must end. Every few seconds it samples the server's
resident memory, open file descriptors, threads and frames in flight. It fails (exit 1) on any
stream that came back incomplete or out of order, on in-flight credits or streams left behind,
or on a growth trend in memory, descriptors or threads over the second half of the run.

usage: scripts/soak.py --framepipe PATH --minutes N [--csv samples.csv]
"""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024.0
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def slope_per_minute(xs, ys):
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framepipe", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--csv", default="")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    bad_dir = tempfile.mkdtemp(prefix="framepipe-soak-")
    # Corrupt images for the bad-input clients: garbage, a truncated JPEG, a PNG bomb header.
    with open(os.path.join(bad_dir, "a_garbage.jpg"), "wb") as f:
        f.write(os.urandom(5000))
    with open(os.path.join(bad_dir, "b_truncated.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(3000))
    with open(os.path.join(bad_dir, "c_bomb.png"), "wb") as f:
        import struct
        import zlib
        ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))

    server = subprocess.Popen([args.framepipe, "serve", "--listen", "127.0.0.1:0", "--metrics",
                               "127.0.0.1:0", "--idle-timeout", "2s", "--max-memory-mb", "512"],
                              stderr=subprocess.PIPE, text=True)
    ports = {}
    while len(ports) < 2:
        line = server.stderr.readline()
        if not line:
            sys.exit("server did not start")
        m = re.search(r"event=server_started .* port=(\d+)", line)
        if m:
            ports["grpc"] = int(m.group(1))
        m = re.search(r"event=metrics_listening .* port=(\d+)", line)
        if m:
            ports["metrics"] = int(m.group(1))
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    target = f"127.0.0.1:{ports['grpc']}"
    base = [args.framepipe, "stream", "--target", target, "--no-progress"]
    kinds = {
        "fast": base + ["--frames", "150", "--streams", "2", "--size", "640x480"],
        "slow": base + ["--frames", "40", "--size", "320x240", "--read-delay-ms", "30"],
        "raw": base + ["--frames", "30", "--size", "1280x720", "--encode", "raw"],
        "bad": base + ["--frames", "60", "--input", bad_dir],
        "paced": base + ["--frames", "60", "--streams", "3", "--fps", "30", "--size", "320x240"],
    }
    failures = []
    counts = {k: 0 for k in list(kinds) + ["killed", "idle"]}
    stop = time.time() + args.minutes * 60
    lock = threading.Lock()

    def client_loop(worker):
        r = random.Random(args.seed * 100 + worker)
        while time.time() < stop:
            kind = r.choice(list(kinds) + ["killed", "idle"])
            if kind == "killed":
                p = subprocess.Popen(kinds["fast"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                time.sleep(r.uniform(0.05, 0.8))
                p.send_signal(signal.SIGKILL)
                p.wait()
            elif kind == "idle":
                # Opens a stream with grpcurl-free means: a client that sends nothing for long
                # (--fps 0.2 and one frame: the server's idle timeout is 2 s) is ended by the
                # server; the client must report it, not hang.
                p = subprocess.run(base + ["--frames", "2", "--fps", "0.2", "--size", "64x48",
                                           "--timeout", "60"], capture_output=True, text=True)
                if "DEADLINE_EXCEEDED" not in p.stdout + p.stderr and p.returncode == 0:
                    pass  # the frame was sent before the timeout: fine either way
            else:
                p = subprocess.run(kinds[kind], capture_output=True, text=True)
                if p.returncode != 0:
                    with lock:
                        failures.append(f"{kind}: exit {p.returncode}: {p.stdout[-400:]}")
            with lock:
                counts[kind] += 1

    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    samples = []
    t0 = time.time()
    while any(w.is_alive() for w in workers):
        rss, fds, threads = proc_sample(server.pid)
        in_flight = metric(ports["metrics"], "framepipe_in_flight")
        samples.append((time.time() - t0, rss, fds, threads, in_flight))
        print(f"  t={samples[-1][0]:7.1f}s rss={rss:7.1f} MiB fds={fds:4d} threads={threads:3d} "
              f"in_flight={in_flight:.0f}", flush=True)
        time.sleep(3)
    for w in workers:
        w.join()
    # Idle again: everything must come back.
    settle = time.time() + 30
    while time.time() < settle:
        if metric(ports["metrics"], "framepipe_in_flight") == 0 and \
                metric(ports["metrics"], "framepipe_active_streams") == 0:
            break
        time.sleep(0.5)
    rss, fds, threads = proc_sample(server.pid)
    in_flight = metric(ports["metrics"], "framepipe_in_flight")
    active = metric(ports["metrics"], "framepipe_active_streams")
    frames = metric(ports["metrics"], 'framepipe_frames_total{status="ok"}')
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(timeout=60)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("t_s,rss_mib,fds,threads,in_flight\n")
            for s in samples:
                f.write(",".join(str(v) for v in s) + "\n")
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    xs = [s[0] for s in half]
    rss_slope = slope_per_minute(xs, [s[1] for s in half])
    fd_slope = slope_per_minute(xs, [s[2] for s in half])
    thread_slope = slope_per_minute(xs, [s[3] for s in half])
    first_half_max = max((s[1] for s in samples if s[0] < samples[-1][0] / 2), default=rss)
    print(f"\nsoak: {args.minutes:g} min, clients {counts}, ok frames {frames:.0f}")
    print(f"  RSS: first-half max {first_half_max:.1f} MiB, end {rss:.1f} MiB, second-half "
          f"slope {rss_slope:+.2f} MiB/min")
    print(f"  fds: end {fds}, slope {fd_slope:+.2f}/min; threads: end {threads}, slope "
          f"{thread_slope:+.2f}/min")
    print(f"  idle at the end: in_flight={in_flight:.0f} active_streams={active:.0f}; server exit "
          f"{exit_code}")
    problems = list(failures)
    if in_flight != 0 or active != 0:
        problems.append(f"left behind: in_flight={in_flight} active_streams={active}")
    if rss_slope > 2.0 and rss > first_half_max + 16:
        problems.append(f"memory grows: {rss_slope:+.2f} MiB/min, {rss:.1f} MiB at the end")
    if fd_slope > 1.0 and fds > max(s[2] for s in samples[: len(samples) // 2 or 1]) + 8:
        problems.append(f"file descriptors grow: {fd_slope:+.2f}/min")
    if thread_slope > 1.0 and threads > max(s[3] for s in samples[: len(samples) // 2 or 1]) + 4:
        problems.append(f"threads grow: {thread_slope:+.2f}/min")
    if exit_code != 0:
        problems.append(f"server exit code {exit_code}")
    for p in problems:
        print("FAIL:", p)
    print("soak: PASS" if not problems else "soak: FAIL")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
