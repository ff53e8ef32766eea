#!/usr/bin/python3
"""A framepipe-compatible server written the way a competent Python developer would.

It is the benchmark's Python peer: the same wire contract (framepipe.v1), the same computations
with stock OpenCV/numpy calls (imdecode, cvtColor, calcHist, meanStdDev, Laplacian in CV_64F,
Sobel, resize INTER_AREA, FAST, a numpy dominant colour), a thread pool for the per-frame work,
a semaphore bounding frames in flight per stream, and a resequencing dict that releases results
in order. Run it with the Debian interpreter: /usr/bin/python3 python_server.py --port 0
"""
import argparse
import concurrent.futures
import os
import queue
import sys
import threading

import cv2
import grpc
import numpy as np

sys.path.insert(0, os.environ.get("FRAMEPIPE_PY_GEN", os.path.dirname(os.path.abspath(__file__))))
from framepipe.v1 import framepipe_pb2 as pb  # noqa: E402
from framepipe.v1 import framepipe_pb2_grpc as pb_grpc  # noqa: E402

cv2.setNumThreads(1)  # the pool provides the parallelism
_FAST = cv2.FastFeatureDetector_create(threshold=20, nonmaxSuppression=True)


def analyse(frame):
    """One frame -> FrameResult fields (None, error) or (result, None)."""
    if frame.WhichOneof("payload") == "encoded":
        buf = np.frombuffer(frame.encoded, dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None:
            return None, f"frame seq={frame.seq}: undecodable image"
    elif frame.WhichOneof("payload") == "raw":
        raw = frame.raw
        ch = {1: 1, 2: 3, 3: 3}.get(raw.format)
        if ch is None or len(raw.data) != raw.width * raw.height * ch:
            return None, f"frame seq={frame.seq}: bad raw frame"
        img = np.frombuffer(raw.data, dtype=np.uint8).reshape(raw.height, raw.width, ch)
        if raw.format == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        elif ch == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    else:
        return None, f"frame seq={frame.seq}: no payload"
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.uint32)
    mean, std = cv2.meanStdDev(gray)
    lap = cv2.Laplacian(gray, cv2.CV_64F, ksize=1)
    _, lap_std = cv2.meanStdDev(lap)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    edges = float(np.count_nonzero(gx * gx + gy * gy > 4096.0)) / gray.size
    thumb = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    q = (img >> 5).astype(np.uint16)
    cells = np.bincount((q[..., 0] << 6 | q[..., 1] << 3 | q[..., 2]).ravel(), minlength=512)
    best = int(np.argmax(cells))
    keypoints = len(_FAST.detect(gray, None))
    r = pb.FrameResult(seq=frame.seq, status=pb.FRAME_STATUS_OK,
                       capture_time_us=frame.capture_time_us)
    a = r.analysis
    a.width, a.height = gray.shape[1], gray.shape[0]
    a.mean_luma, a.stddev_luma = float(mean[0][0]), float(std[0][0])
    a.luma_histogram.extend(int(v) for v in hist)
    a.sharpness = float(lap_std[0][0]) ** 2
    a.edge_density = edges
    a.backend = "python"
    e = r.enrichment
    e.dark, e.overexposed, e.blurry = a.mean_luma < 40, a.mean_luma > 215, a.sharpness < 100
    e.dominant_bgr.extend([(best >> 6) * 32 + 16, ((best >> 3) & 7) * 32 + 16, (best & 7) * 32 + 16])
    e.keypoints = keypoints
    return (r, hist, thumb), None


class Servicer(pb_grpc.FramePipelineServicer):
    def __init__(self, workers, max_in_flight):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.max_in_flight = max_in_flight
        self.lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0

    def Process(self, request_iterator, context):
        out = queue.Queue()
        window = threading.Semaphore(self.max_in_flight)
        pending = {}  # index -> result: the resequencing dict
        state = {"next": 0, "prev": None}
        lock = threading.Lock()

        def finish(index, frame, fut):
            try:
                value, err = fut.result()
            except Exception as exc:  # noqa: BLE001
                value, err = None, f"frame seq={frame.seq}: internal error: {exc}"
            if err:
                value = (pb.FrameResult(seq=frame.seq, status=pb.FRAME_STATUS_INVALID_ARGUMENT,
                                        error=err, capture_time_us=frame.capture_time_us), None, None)
            for k, v in frame.tags.items():
                value[0].tags[k] = v
            with lock:
                pending[index] = value
                while state["next"] in pending:
                    res, hist, thumb = pending.pop(state["next"])
                    prev = state["prev"]
                    if hist is not None:
                        if prev is not None:
                            h0 = prev[0] / prev[0].sum()
                            h1 = hist / hist.sum()
                            res.enrichment.scene_change = 0.5 * float(np.abs(h1 - h0).sum())
                            res.enrichment.scene_cut = res.enrichment.scene_change > 0.5
                            res.enrichment.motion = float(
                                np.abs(thumb.astype(np.int16) - prev[1]).mean()) / 255.0
                        state["prev"] = (hist.astype(np.float64), thumb.astype(np.int16))
                    state["next"] += 1
                    out.put(res)

        def reader():
            index = 0
            try:
                for req in request_iterator:
                    if req.WhichOneof("kind") != "frame":
                        continue
                    window.acquire()
                    with self.lock:
                        self.frames_in += 1
                    frame = req.frame
                    fut = self.pool.submit(analyse, frame)
                    fut.add_done_callback(lambda f, i=index, fr=frame: finish(i, fr, f))
                    index += 1
            finally:
                out.put(("end", index))

        threading.Thread(target=reader, daemon=True).start()
        sent = 0
        total = None
        while total is None or sent < total:
            item = out.get()
            if isinstance(item, tuple):
                total = item[1]
                continue
            sent += 1
            window.release()
            with self.lock:
                self.frames_out += 1
            yield item

    def GetStats(self, request, context):
        with self.lock:
            return pb.Stats(frames_in=self.frames_in, frames_out=self.frames_out, backend="python")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--max-in-flight", type=int, default=8)
    args = ap.parse_args()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_FramePipelineServicer_to_server(Servicer(args.workers, args.max_in_flight), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"python_server listening port={port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
