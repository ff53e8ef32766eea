"""Compressed packets from a video file or camera, demuxed with PyAV (Debian: python3-av):
what :meth:`FramePipeClient.process_video` sends. Nothing is decoded here."""
from __future__ import annotations

import time
from typing import Iterator, Optional, Tuple

from .types import VideoCodec, VideoFormat, VideoPacket

_CODECS = {"h264": VideoCodec.H264, "hevc": VideoCodec.HEVC}


def open_video_packets(source: str, *, realtime: bool = False, fps: Optional[float] = None,
                       limit: Optional[int] = None) -> Tuple[VideoFormat, Iterator[VideoPacket]]:
    """Opens ``source`` (a path or URL) and returns its :class:`VideoFormat` and an iterator of
    its video packets in decode order. ``realtime`` paces by the packets' timestamps, ``fps``
    at a fixed rate; ``limit`` stops after that many packets. Raises ValueError for a video
    that is not H.264 or HEVC."""
    try:
        import av
    except ImportError:
        raise RuntimeError("sending video packets needs PyAV (Debian: python3-av)") from None
    options = {"rtsp_transport": "tcp"} if source.startswith("rtsp://") else {}
    container = av.open(source, options=options)
    stream = container.streams.video[0] if container.streams.video else None
    if stream is None:
        container.close()
        raise ValueError(f"{source}: no video stream")
    name = stream.codec_context.name
    if name not in _CODECS:
        container.close()
        raise ValueError(f"{source}: video is {name}; the server decodes h264 or hevc (send "
                         "decoded frames with process() instead)")
    tb = stream.time_base
    fmt = VideoFormat(codec=_CODECS[name], extradata=bytes(stream.codec_context.extradata or b""),
                      time_base=(tb.numerator, tb.denominator) if tb else (0, 0))

    def packets() -> Iterator[VideoPacket]:
        start = time.perf_counter()
        first_ts: Optional[float] = None
        sent = 0
        try:
            for p in container.demux(stream):
                if p.size == 0:  # the demuxer's end-of-stream marker
                    continue
                if limit is not None and sent >= limit:
                    return
                ts = p.pts if p.pts is not None else (p.dts if p.dts is not None else sent)
                if realtime and tb is not None:
                    t = float(ts * tb)
                    first_ts = t if first_ts is None else first_ts
                    wait = start + (t - first_ts) - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                elif fps:
                    wait = start + sent / fps - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                sent += 1
                yield VideoPacket(bytes(p), pts=int(ts))
        finally:
            container.close()

    return fmt, packets()
