"""Plain, typed values for what goes in and comes out of framepipe (no protobuf in user code)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._stubs import pb2


class FrameStatus(enum.IntEnum):
    """Per-frame outcome (``FrameStatus`` in the wire contract)."""

    UNSPECIFIED = 0
    OK = 1
    INVALID_ARGUMENT = 2  # the frame itself was bad: undecodable, wrong size, bad seq...
    DEADLINE_EXCEEDED = 3  # StreamConfig.frame_timeout_ms passed before it was processed
    DROPPED = 4  # overload policy DROP_OLDEST made room for newer frames
    INTERNAL = 5  # the server failed on this frame; the stream goes on


class Overload(str, enum.Enum):
    """What the server does when a stream has no credit left (``OverloadPolicy``)."""

    BLOCK = "block"  # stop reading: flow control pushes back to this client
    DROP_OLDEST = "drop_oldest"  # answer the oldest not-yet-started frames with DROPPED


class PixelFormat(str, enum.Enum):
    """Channel order of a raw numpy image."""

    BGR = "bgr"  # OpenCV's order (cv2.imread, cv2.VideoCapture)
    RGB = "rgb"
    GRAY = "gray"


class VideoCodec(enum.IntEnum):
    """Compressed video the server decodes (``VideoCodec`` in the wire contract)."""

    H264 = 1
    HEVC = 2


@dataclass(frozen=True)
class VideoFormat:
    """A compressed video stream: its codec and parameter sets. ``extradata``: the avcC/hvcC
    record of an MP4/MKV (packets are then length-prefixed, as stored there), Annex-B parameter
    sets (TS, raw .h264), or empty (Annex-B packets carrying them in band). ``time_base``: the
    unit of the packets' pts (informational)."""

    codec: VideoCodec
    extradata: bytes = b""
    time_base: Tuple[int, int] = (0, 0)

    def to_proto(self) -> Any:
        return pb2.VideoFormat(codec=int(self.codec), extradata=bytes(self.extradata),
                               time_base_num=self.time_base[0], time_base_den=self.time_base[1])


@dataclass(frozen=True)
class StreamConfig:
    """Per-stream settings sent before the first frame. Zero / None means the server default.
    ``video``: set for a stream of compressed video packets (:class:`VideoPacket`)."""

    stream_id: Optional[str] = None
    max_in_flight: int = 0
    overload: Overload = Overload.BLOCK
    frame_timeout_ms: int = 0
    include_thumbnail: bool = False
    video: Optional[VideoFormat] = None

    def to_proto(self) -> Any:
        cfg = pb2.StreamConfig(
            stream_id=self.stream_id or "",
            max_in_flight=self.max_in_flight,
            overload=(pb2.OVERLOAD_POLICY_DROP_OLDEST if Overload(self.overload)
                      is Overload.DROP_OLDEST else pb2.OVERLOAD_POLICY_BLOCK),
            frame_timeout_ms=self.frame_timeout_ms,
            include_thumbnail=self.include_thumbnail)
        if self.video is not None:
            cfg.video.CopyFrom(self.video.to_proto())
        return cfg


@dataclass
class VideoPacket:
    """One compressed access unit of a video stream, in decode order (as a demuxer gives it),
    with the presentation time of its picture. The result for it describes that picture and
    echoes ``pts``."""

    data: bytes
    pts: int = 0
    seq: Optional[int] = None
    capture_time_us: Optional[int] = None
    tags: Dict[str, str] = field(default_factory=dict)


Payload = Union[np.ndarray, bytes, bytearray, memoryview]


@dataclass
class Frame:
    """A frame with explicit metadata. Plain numpy arrays and bytes are accepted too.

    ``image``: an ``HxWx3`` uint8 array (BGR unless ``pixel_format`` says RGB), an ``HxW`` or
    ``HxWx1`` uint8 gray array, or the bytes of a JPEG/PNG file.
    ``seq``: strictly increasing within a stream (gaps allowed); default: the previous + 1.
    ``capture_time_us``: wall-clock microseconds at capture; default: when it is sent.
    """

    image: Payload
    seq: Optional[int] = None
    capture_time_us: Optional[int] = None
    tags: Dict[str, str] = field(default_factory=dict)
    pixel_format: PixelFormat = PixelFormat.BGR


@dataclass(frozen=True)
class Analysis:
    width: int
    height: int
    mean_luma: float  # BT.601 luma as OpenCV's BGR2GRAY, 0..255
    stddev_luma: float
    luma_histogram: Tuple[int, ...]  # 256 bins
    sharpness: float  # variance of the Laplacian of luma
    edge_density: float  # share of pixels with a strong Sobel gradient, 0..1
    thumbnail: Optional[np.ndarray]  # 64x64 uint8 gray, with StreamConfig.include_thumbnail
    backend: str  # "cpu" | "cuda"


@dataclass(frozen=True)
class Enrichment:
    dark: bool
    overexposed: bool
    blurry: bool
    dominant_bgr: Tuple[float, ...]
    keypoints: int  # FAST corners
    scene_change: float  # 0..1 vs the previous OK frame of the stream
    scene_cut: bool  # the scene-cut detector's decision: cut_score >= the server's --scene-cut
    motion: float  # 0..1 vs the previous OK frame of the stream
    cut_score: float  # the causal scene-cut detector's confidence, 0..1


@dataclass(frozen=True)
class Timings:
    """Server-side microseconds per stage."""

    queue_us: int
    decode_us: int
    analyse_us: int
    enrich_us: int
    reorder_us: int
    total_us: int


@dataclass(frozen=True)
class FrameResult:
    """One frame's answer, in the order the frames were sent.

    ``status`` / ``error`` carry frame-level problems (a bad frame does not end the stream);
    ``analysis`` and ``enrichment`` are set only when ``ok``. ``frame`` is the object you passed
    in for this frame (handy for drawing), ``latency_ms`` the time from send to result here.
    """

    seq: int
    status: FrameStatus
    error: str
    capture_time_us: int
    analysis: Optional[Analysis]
    enrichment: Optional[Enrichment]
    timings: Timings
    tags: Dict[str, str]
    frame: Any
    latency_ms: float
    pts: int = 0  # the frame's pts, echoed (video packets)

    @property
    def ok(self) -> bool:
        return self.status is FrameStatus.OK

    def raise_for_status(self) -> "FrameResult":
        """Raises :class:`FrameError` unless the frame is OK; returns self otherwise."""
        if not self.ok:
            from .errors import FrameError

            raise FrameError(self.seq, self.status, self.error)
        return self

    @staticmethod
    def from_proto(r: Any, frame: Any, latency_ms: float) -> "FrameResult":
        status = FrameStatus(r.status) if r.status in FrameStatus._value2member_map_ \
            else FrameStatus.UNSPECIFIED
        analysis = enrichment = None
        if status is FrameStatus.OK:
            a, e = r.analysis, r.enrichment
            thumb = None
            if a.thumbnail:
                thumb = np.frombuffer(a.thumbnail, dtype=np.uint8).reshape(64, 64)
            analysis = Analysis(a.width, a.height, a.mean_luma, a.stddev_luma,
                                tuple(a.luma_histogram), a.sharpness, a.edge_density, thumb,
                                a.backend)
            enrichment = Enrichment(e.dark, e.overexposed, e.blurry, tuple(e.dominant_bgr),
                                    e.keypoints, e.scene_change, e.scene_cut, e.motion,
                                    e.cut_score)
        t = r.timings
        return FrameResult(
            seq=r.seq, status=status, error=r.error, capture_time_us=r.capture_time_us,
            analysis=analysis, enrichment=enrichment,
            timings=Timings(t.queue_us, t.decode_us, t.analyse_us, t.enrich_us, t.reorder_us,
                            t.total_us),
            tags=dict(r.tags), frame=frame, latency_ms=latency_ms, pts=r.pts)


@dataclass(frozen=True)
class ServerStats:
    """Server-wide counters (``GetStats``)."""

    frames_in: int
    frames_out: int
    in_flight: int
    active_streams: int
    streams_total: int
    frames_ok: int
    frames_invalid_argument: int
    frames_deadline_exceeded: int
    frames_dropped: int
    frames_internal: int
    backend: str
    workers: int
    uptime_seconds: float
    streams_rejected: int
    version: str
    peak_in_flight: int
    bytes_in_flight: int
    peak_bytes_in_flight: int

    @staticmethod
    def from_proto(s: Any) -> "ServerStats":
        return ServerStats(**{f: getattr(s, f) for f in ServerStats.__dataclass_fields__})


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server. Each of ``ca``/``cert``/``key`` is a PEM path or PEM bytes.

    ``ca``: roots to verify the server (None: the system's roots). ``cert`` + ``key``: this
    client's certificate for mutual TLS. ``server_name``: the name to verify when it differs
    from the target's host (an IP address, say).
    """

    ca: Union[str, bytes, None] = None
    cert: Union[str, bytes, None] = None
    key: Union[str, bytes, None] = None
    server_name: Optional[str] = None


__all__: List[str] = [
    "Analysis", "Enrichment", "Frame", "FrameResult", "FrameStatus", "Overload", "PixelFormat",
    "ServerStats", "StreamConfig", "Timings", "TlsConfig", "VideoCodec", "VideoFormat",
    "VideoPacket",
]
