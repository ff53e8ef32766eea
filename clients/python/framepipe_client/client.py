"""FramePipeClient: stream frames to a framepipe server and get the results back in order."""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from ._stubs import pb2, pb2_grpc
from .errors import FramePipeError
from .types import (Frame, FrameResult, PixelFormat, ServerStats, StreamConfig, TlsConfig,
                    VideoPacket)

_MAX_MESSAGE = 64 << 20
_ENCODINGS = ("raw", "jpeg", "png")
_VIDEO_WINDOW = 48


def _pem(value: Union[str, bytes, None]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _Health:
    """grpc.health.v1 messages, built from a descriptor (Debian has no grpcio-health-checking).
    """

    _lock = threading.Lock()
    _classes: Optional[Tuple[Any, Any]] = None

    @classmethod
    def classes(cls) -> Tuple[Any, Any]:
        with cls._lock:
            if cls._classes is None:
                from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

                f = descriptor_pb2.FileDescriptorProto(
                    name="framepipe_client/grpc_health_v1.proto", package="grpc.health.v1",
                    syntax="proto3")
                req = f.message_type.add(name="HealthCheckRequest")
                req.field.add(name="service", number=1,
                              type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                              label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
                resp = f.message_type.add(name="HealthCheckResponse")
                enum = resp.enum_type.add(name="ServingStatus")
                for i, n in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
                    enum.value.add(name=n, number=i)
                resp.field.add(name="status", number=1,
                               type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                               type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                               label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
                pool = descriptor_pool.DescriptorPool()  # private: no clash with other copies
                pool.Add(f)
                get = getattr(message_factory, "GetMessageClass", None)
                if get is None:  # protobuf < 4.22
                    factory = message_factory.MessageFactory(pool)
                    get = factory.GetPrototype
                cls._classes = (
                    get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
                    get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))
            return cls._classes


class FramePipeClient:
    """A connection to one framepipe server (or several: ``ipv4:a:p,b:p`` / ``dns:///host:p``
    targets spread streams round-robin over the addresses).

    Thread-safe: any number of threads may run :meth:`process` at once, each its own stream.

    >>> with FramePipeClient("127.0.0.1:50051") as client:
    ...     for result in client.process(frames):
    ...         print(result.seq, result.status.name, result.analysis.mean_luma)

    ``tls``: ``None``/``False`` for plaintext, ``True`` for TLS with the system's roots, or a
    :class:`TlsConfig` (private CA, mutual TLS, server-name override). ``token``: a bearer token
    for servers started with ``--auth-token-file`` (needs TLS). ``max_in_flight``: the default
    client-side window for :meth:`process`.
    """

    def __init__(self, target: str, *, tls: Union[bool, TlsConfig, None] = None,
                 token: Optional[str] = None, max_in_flight: Optional[int] = None,
                 options: Sequence[Tuple[str, Any]] = ()):
        opts: List[Tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if tls:
            cfg = tls if isinstance(tls, TlsConfig) else TlsConfig()
            creds = grpc.ssl_channel_credentials(root_certificates=_pem(cfg.ca),
                                                 private_key=_pem(cfg.key),
                                                 certificate_chain=_pem(cfg.cert))
            if cfg.server_name:
                opts.append(("grpc.ssl_target_name_override", cfg.server_name))
            if token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token))
            opts.extend(options)
            self._channel = grpc.secure_channel(target, creds, options=opts)
        else:
            if token:
                raise ValueError("a bearer token needs TLS (pass tls=True or a TlsConfig): "
                                 "framepipe only accepts tokens over TLS")
            opts.extend(options)
            self._channel = grpc.insecure_channel(target, options=opts)
        self.target = target
        self.max_in_flight = max_in_flight
        self._stub = pb2_grpc.FramePipelineStub(self._channel)

    # ---- lifecycle
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FramePipeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected; FramePipeError(UNAVAILABLE) after timeout."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise FramePipeError(f"no connection to {self.target} within {timeout} s",
                                 code=grpc.StatusCode.UNAVAILABLE) from None

    # ---- unary calls
    def stats(self, timeout: float = 10.0) -> ServerStats:
        try:
            return ServerStats.from_proto(self._stub.GetStats(pb2.GetStatsRequest(),
                                                              timeout=timeout))
        except grpc.RpcError as e:
            raise FramePipeError.from_rpc(e, []) from None

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The grpc.health.v1 status: "SERVING", or "NOT_SERVING" while the server drains.
        ``service``: "" for the server, or "framepipe.v1.FramePipeline"."""
        req_cls, resp_cls = _Health.classes()
        check = self._channel.unary_unary("/grpc.health.v1.Health/Check",
                                          request_serializer=req_cls.SerializeToString,
                                          response_deserializer=resp_cls.FromString)
        try:
            resp = check(req_cls(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise FramePipeError.from_rpc(e, []) from None
        return resp_cls.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number[
            resp.status].name

    # ---- the stream
    def process(self, frames: Iterable[Any], *, config: Optional[StreamConfig] = None,
                max_in_flight: Optional[int] = None, encode: str = "raw",
                jpeg_quality: int = 90, timeout: Optional[float] = None,
                metadata: Sequence[Tuple[str, str]] = ()) -> Iterator[FrameResult]:
        """Streams ``frames`` over one Process call and yields one :class:`FrameResult` per
        frame, in the order sent.

        ``frames``: any iterable (a list, a generator reading a camera...) of numpy images, JPEG
        or PNG bytes, or :class:`Frame` objects. It is consumed lazily on a gRPC thread: at most
        ``max_in_flight`` frames are taken and not yet answered (default: twice the stream's
        server-side window, or 16), so a slow consumer of this iterator slows the producer -
        backpressure, never unbounded buffering.

        ``encode``: how numpy images travel: "raw" (exact pixels, no encoding cost), "jpeg"
        (``jpeg_quality``) or "png" (needs python3-opencv). Bytes are sent as they are.

        Frame-level problems (an undecodable image, a deadline, a drop) come back as results
        with ``status`` != OK and ``error`` set; the stream goes on. RPC-level failures raise
        :class:`FramePipeError` after every result that did arrive has been yielded. Breaking
        out of the loop cancels the call. An exception raised by ``frames`` is re-raised here
        after the results of the frames already sent.
        """
        if encode not in _ENCODINGS:
            raise ValueError(f"encode must be one of {_ENCODINGS}, not {encode!r}")
        cfg = config or StreamConfig()
        window = max_in_flight or self.max_in_flight or (2 * cfg.max_in_flight
                                                          if cfg.max_in_flight else 16)
        if cfg.video is not None and not max_in_flight and not self.max_in_flight:
            # A packet's result can wait for up to 17 later packets (a decoder's reorder delay):
            # a smaller window would stop sending the packets that let it out.
            window = max(window, _VIDEO_WINDOW)
        if window < 1:
            raise ValueError("max_in_flight must be at least 1")
        return _Stream(self._stub, frames, cfg, window, encode, jpeg_quality, timeout,
                       list(metadata)).results()

    def process_video(self, source: str, *, config: Optional[StreamConfig] = None,
                      max_in_flight: Optional[int] = None, realtime: bool = False,
                      fps: Optional[float] = None, frames: Optional[int] = None,
                      timeout: Optional[float] = None,
                      metadata: Sequence[Tuple[str, str]] = ()) -> Iterator[FrameResult]:
        """Streams the H.264/HEVC packets of a video file (MP4, MKV, TS...) or camera URL
        (rtsp://...) as they are - demuxed with PyAV (Debian: python3-av), never decoded or
        re-encoded here - and yields one result per packet, in the order sent, each describing
        the picture that packet carried (``pts`` echoed).

        ``realtime``: send at the pace of the packets' timestamps (a recording played as if
        live); ``fps``: send at this rate; neither: as fast as the server takes them.
        ``frames``: stop after this many packets. ``config``: stream settings; its ``video`` is
        filled in from the file. Packets the server cannot decode come back INVALID_ARGUMENT
        (before the first keyframe, damaged, depending on a damaged one); the stream goes on.
        """
        from .video import open_video_packets

        fmt, packets = open_video_packets(source, realtime=realtime, fps=fps, limit=frames)
        cfg = dataclasses.replace(config or StreamConfig(), video=fmt)
        return self.process(packets, config=cfg, max_in_flight=max_in_flight, timeout=timeout,
                            metadata=metadata)

    def analyse(self, image: Any, *, config: Optional[StreamConfig] = None,
                encode: str = "raw", timeout: Optional[float] = 30.0) -> FrameResult:
        """One frame, one result (a stream of one: no temporal fields such as motion)."""
        return next(iter(self.process([image], config=config, encode=encode,
                                      timeout=timeout)))


class _Stream:
    """One Process call: a request generator run by gRPC, gated by a semaphore that the result
    loop releases, and a window of (seq, frame, send time) for order checks and loss reports.
    """

    def __init__(self, stub: Any, frames: Iterable[Any], cfg: StreamConfig, window: int,
                 encode: str, jpeg_quality: int, timeout: Optional[float],
                 metadata: List[Tuple[str, str]]):
        self._stub = stub
        self._frames = frames
        self._cfg = cfg
        self._slots = threading.Semaphore(window)
        self._encode = encode
        self._quality = jpeg_quality
        self._timeout = timeout
        self._metadata = metadata
        self._lock = threading.Lock()
        self._pending: Deque[Tuple[int, Any, float]] = collections.deque()
        self._stop = threading.Event()
        self._source_error: Optional[BaseException] = None
        self._last_seq = 0
        self._index = 0

    def _requests(self) -> Iterator[Any]:
        yield pb2.ProcessRequest(config=self._cfg.to_proto())
        it = iter(self._frames)
        while True:
            self._slots.acquire()
            if self._stop.is_set():
                return
            try:
                item = next(it)
                req = self._to_request(item)
            except StopIteration:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._source_error = e
                return
            with self._lock:
                self._pending.append((req.frame.seq, item, time.perf_counter()))
            yield req

    def _to_request(self, item: Any) -> Any:
        index = self._index
        self._index += 1
        if isinstance(item, VideoPacket):
            return self._packet_request(item, index)
        if self._cfg.video is not None:
            raise TypeError(f"frame {index}: a video stream (StreamConfig.video set) sends "
                            f"VideoPacket objects, not {type(item).__name__}")
        frame = item if isinstance(item, Frame) else Frame(item)
        seq = self._next_seq(frame.seq, index)
        msg = pb2.Frame(seq=seq, capture_time_us=(frame.capture_time_us if frame.capture_time_us
                                                  is not None else time.time_ns() // 1000))
        for k, v in frame.tags.items():
            msg.tags[str(k)] = str(v)
        img = frame.image
        if isinstance(img, (bytes, bytearray, memoryview)):
            msg.encoded = bytes(img)
        elif isinstance(img, np.ndarray):
            self._set_image(msg, img, PixelFormat(frame.pixel_format), index)
        else:
            raise TypeError(f"frame {index}: expected a numpy image, bytes or a Frame, not "
                            f"{type(img).__name__}")
        return pb2.ProcessRequest(frame=msg)

    def _next_seq(self, seq: Optional[int], index: int) -> int:
        seq = seq if seq is not None else self._last_seq + 1
        if seq <= self._last_seq:
            raise ValueError(f"frame {index}: seq {seq} is not above the previous seq "
                             f"{self._last_seq} (seqs must increase within a stream)")
        self._last_seq = seq
        return seq

    def _packet_request(self, p: VideoPacket, index: int) -> Any:
        if self._cfg.video is None:
            raise TypeError(f"frame {index}: a VideoPacket needs StreamConfig(video=...) "
                            "(or use process_video)")
        msg = pb2.Frame(seq=self._next_seq(p.seq, index), pts=p.pts,
                        video_packet=bytes(p.data),
                        capture_time_us=(p.capture_time_us if p.capture_time_us is not None
                                         else time.time_ns() // 1000))
        for k, v in p.tags.items():
            msg.tags[str(k)] = str(v)
        return pb2.ProcessRequest(frame=msg)

    def _set_image(self, msg: Any, img: np.ndarray, fmt: PixelFormat, index: int) -> None:
        if img.dtype != np.uint8:
            raise ValueError(f"frame {index}: images must be uint8, not {img.dtype} (convert "
                             "with img.astype(np.uint8) or cv2.convertScaleAbs)")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
            fmt = PixelFormat.GRAY
        if img.ndim == 2:
            fmt = PixelFormat.GRAY
        elif not (img.ndim == 3 and img.shape[2] == 3):
            raise ValueError(f"frame {index}: expected HxW, HxWx1 or HxWx3 pixels, not shape "
                             f"{img.shape} (BGRA: cv2.cvtColor(img, cv2.COLOR_BGRA2BGR))")
        if self._encode == "raw":
            h, w = img.shape[:2]
            pf = {PixelFormat.BGR: pb2.PIXEL_FORMAT_BGR8, PixelFormat.RGB: pb2.PIXEL_FORMAT_RGB8,
                  PixelFormat.GRAY: pb2.PIXEL_FORMAT_GRAY8}[fmt]
            msg.raw.width = w
            msg.raw.height = h
            msg.raw.format = pf
            msg.raw.data = np.ascontiguousarray(img).tobytes()
            return
        try:
            import cv2
        except ImportError:
            raise RuntimeError("encode='jpeg'/'png' needs OpenCV for Python (Debian: "
                               "python3-opencv); or use encode='raw'") from None
        if fmt is PixelFormat.RGB:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        params = ([cv2.IMWRITE_JPEG_QUALITY, self._quality] if self._encode == "jpeg"
                  else [cv2.IMWRITE_PNG_COMPRESSION, 1])
        ok, buf = cv2.imencode("." + ("jpg" if self._encode == "jpeg" else "png"), img, params)
        if not ok:
            raise ValueError(f"frame {index}: OpenCV could not encode it as {self._encode}")
        msg.encoded = buf.tobytes()

    def _lost(self) -> List[int]:
        with self._lock:
            return [seq for seq, _, _ in self._pending]

    def results(self) -> Iterator[FrameResult]:
        call = self._stub.Process(self._requests(), timeout=self._timeout,
                                  metadata=self._metadata or None)
        try:
            try:
                for res in call:
                    now = time.perf_counter()
                    with self._lock:
                        expected = self._pending.popleft() if self._pending else None
                    if expected is None or res.seq != expected[0]:
                        want = "none" if expected is None else str(expected[0])
                        raise FramePipeError(
                            f"protocol violation: result for seq {res.seq} while the next "
                            f"frame sent was seq {want}", lost_seqs=self._lost())
                    self._slots.release()
                    yield FrameResult.from_proto(res, expected[1], (now - expected[2]) * 1e3)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED and self._source_error is not None:
                    raise self._source_error from None
                raise FramePipeError.from_rpc(e, self._lost()) from None
            if self._source_error is not None:
                raise self._source_error
            lost = self._lost()
            if lost:
                raise FramePipeError(f"the server ended the stream with {len(lost)} frame(s) "
                                     "unanswered", lost_seqs=lost)
        finally:
            # Normal end, an error, or the caller broke out of the loop (GeneratorExit):
            # unblock the request generator and cancel the call if it is still running.
            self._stop.set()
            self._slots.release()
            call.cancel()
